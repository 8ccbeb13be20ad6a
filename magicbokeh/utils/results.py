"""Results as data: every figure the README quotes lives in a JSON file under ``results/``, with what made it.

A results file (schema 1) holds::

    name         the file's stem (results/<name>.json)
    title        one line: what was measured
    command      the exact command that re-makes the file from a fresh clone
    seed         the seed (null when nothing random is involved)
    environment  date, code commit and dirty flag, CPU/GPU model, core count, load average, Python/torch/CUDA/library
                 versions
    figures      the numbers, as nested JSON (what tests and other scripts read)
    tables       named tables {columns, rows, formats}: what README blocks render
    notes        optional: how to read the figures (not how they were found)

README blocks are generated, never typed::

    <!-- results: smoke#test -->
    | ... the table rendered from results/smoke.json, table "test" ... |
    <!-- /results -->

``python -m magicbokeh.utils.results README.md`` rewrites every block from its file (``--check`` only compares and
exits 1 on a difference; the test suite runs the check, so an edited README number fails CI).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from magicbokeh.errors import ConfigError
from magicbokeh.utils.files import atomic_write_text

SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR_ENV = "MAGICBOKEH_RESULTS_DIR"
LIBRARIES = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "peft", "numpy", "pyiqa")
# What decides a figure: a modified file here makes the recorded commit not describe the code that ran.
CODE_PATHS = ("magicbokeh", "scripts", "configs", "data", "pyproject.toml", "constraints.txt", "Makefile")
# A block may be indented (inside a Markdown list item): its rendered lines take the indentation of its opening line.
_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)(?P<open><!-- results: (?P<name>[A-Za-z0-9_.-]+)#(?P<table>[A-Za-z0-9_.-]+) -->\n)"
    r"(?P<body>.*?)^[ \t]*(?P<close><!-- /results -->)",
    re.DOTALL | re.MULTILINE,
)


def results_dir() -> Path:
    """``$MAGICBOKEH_RESULTS_DIR`` if set (tests), else ``<repository>/results``."""
    return Path(os.environ.get(RESULTS_DIR_ENV, REPO_ROOT / "results"))


@dataclass
class Table:
    """A table of figures: ``rows`` hold raw values; ``formats`` (one per column, e.g. ``".2f"``, ``""`` = str)
    only decide how they are printed."""

    columns: list[str]
    rows: list[list[Any]]
    formats: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.formats:
            self.formats = [""] * len(self.columns)
        if len(self.formats) != len(self.columns) or any(len(row) != len(self.columns) for row in self.rows):
            raise ConfigError(f"table rows and formats must have {len(self.columns)} cells, like its columns")

    def to_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": [list(row) for row in self.rows], "formats": list(self.formats)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Table:
        return cls(list(data["columns"]), [list(row) for row in data["rows"]], list(data.get("formats") or []))

    def markdown(self) -> str:
        """GitHub markdown; numeric columns right-aligned."""
        cells = [[_format_cell(value, fmt) for value, fmt in zip(row, self.formats)] for row in self.rows]
        numeric = [bool(fmt) for fmt in self.formats]
        header = "| " + " | ".join(self.columns) + " |"
        rule = "|" + "|".join("---:" if is_number else "---" for is_number in numeric) + "|"
        body = ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join([header, rule, *body]) + "\n"


def _format_cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt and isinstance(value, int | float):
        return format(value, fmt)
    return str(value)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Where and with what a figure was made: date, commit, dirty flag, hardware and versions."""
    import torch

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "dirty": None if status is None else bool(status),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        # 1-, 5- and 15-minute load averages when the figures were written: a busy machine slows every wall time.
        "load_average": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in LIBRARIES},
    }


def current_command() -> str:
    """The command line of this process, as a user would type it (``python scripts/x.py args``)."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        try:
            argv[0] = str(Path(argv[0]).resolve().relative_to(REPO_ROOT))
        except ValueError:
            pass
        return "python " + shlex.join(argv)
    return shlex.join([Path(sys.executable).name, *argv])


def write_results(
    name: str,
    figures: Mapping[str, Any],
    *,
    title: str,
    tables: Mapping[str, Table] | None = None,
    command: str | None = None,
    seed: int | None = None,
    notes: str | None = None,
    out_dir: str | os.PathLike | None = None,
    recorded_environment: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<out_dir or results/>/<name>.json`` atomically; returns its path. ``command`` defaults to this
    process's command line (give it when the figures came from a sub-process or a library call);
    ``recorded_environment`` to this moment's :func:`environment` (give the one recorded when the figures were made
    when the run has since written into the tracked tree)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"results name '{name}' may only hold letters, digits, '_', '.' and '-'")
    document = {
        "schema": SCHEMA_VERSION,
        "name": name,
        "title": title,
        "command": command or current_command(),
        "seed": seed,
        "environment": dict(recorded_environment) if recorded_environment is not None else environment(),
        "figures": _jsonable(figures),
        "tables": {key: _jsonable(table.to_json()) for key, table in (tables or {}).items()},
    }
    if notes:
        document["notes"] = notes
    path = Path(out_dir) if out_dir is not None else results_dir()
    target = path / f"{name}.json"
    atomic_write_text(target, json.dumps(document, indent=1, allow_nan=False) + "\n")
    return target


def add_results_option(parser: argparse.ArgumentParser, default: str) -> None:
    """``--results NAME``: the results file a benchmark or study writes (``results/NAME.json``); ``none`` skips it."""
    parser.add_argument(
        "--results",
        default=default,
        metavar="NAME",
        help=f"write the figures to results/NAME.json (default {default}; 'none': do not write)",
    )


def chosen_results_name(value: str | None) -> str | None:
    """The ``--results`` value as a results name, or None for ``none`` / empty."""
    return None if value is None or value.strip().lower() in ("", "none", "null") else value


def _jsonable(value: Any) -> Any:
    """Tensors / NumPy scalars → numbers, tuples → lists, NaN → None (strict JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if hasattr(value, "tolist") and callable(value.tolist):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_results(name: str, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The document of ``results/<name>.json``."""
    path = (Path(directory) if directory is not None else results_dir()) / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"no results file '{path}': run the command that makes it (see the README)")
    document = json.loads(path.read_text(encoding="utf-8"))
    if document.get("schema") != SCHEMA_VERSION:
        raise ConfigError(f"'{path}' has results schema {document.get('schema')}, expected {SCHEMA_VERSION}")
    return document


def source_line(document: Mapping[str, Any]) -> str:
    """The one line printed under a rendered table: which file, which command, which machine and commit."""
    env = document["environment"]
    hardware = ", ".join(env["gpus"]) if env.get("gpus") else f"{env['cpu']} ({env['cpu_cores']} cores)"
    commit = (env.get("commit") or "unknown")[:10] + ("+dirty" if env.get("dirty") else "")
    torch_version = env["versions"].get("torch")
    load = f" · load {env['load_average'][0]:g}" if env.get("load_average") else ""
    return (
        f"<sub>`results/{document['name']}.json` · `{document['command']}` · {hardware}{load} · torch {torch_version}"
        f" · commit {commit} · {env['date'][:10]}</sub>\n"
    )


def render_block(name: str, table: str, directory: str | os.PathLike | None = None) -> str:
    document = read_results(name, directory)
    if table not in document["tables"]:
        raise ConfigError(f"results/{name}.json has no table '{table}' (it has {sorted(document['tables'])})")
    return Table.from_json(document["tables"][table]).markdown() + "\n" + source_line(document)


def render_markdown(text: str, directory: str | os.PathLike | None = None) -> str:
    """``text`` with every ``<!-- results: name#table -->`` block re-rendered from its results file."""

    def replace(match: re.Match) -> str:
        indent = match["indent"]
        lines = render_block(match["name"], match["table"], directory).splitlines(keepends=True)
        body = "".join(indent + line if line.strip() else line for line in lines)
        return indent + match["open"] + body + indent + match["close"]

    return _BLOCK.sub(replace, text)


def referenced_results(text: str) -> list[tuple[str, str]]:
    """``(name, table)`` of every results block in ``text``."""
    return [(match["name"], match["table"]) for match in _BLOCK.finditer(text)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m magicbokeh.utils.results", description="Render README result tables from results/*.json."
    )
    parser.add_argument("files", nargs="+", type=Path, help="markdown files with <!-- results: … --> blocks")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path in args.files:
        text = path.read_text(encoding="utf-8")
        rendered = render_markdown(text)
        if rendered != text:
            stale.append(path)
            if not args.check:
                atomic_write_text(path, rendered)
    if args.check and stale:
        print("out of date with results/ (run python -m magicbokeh.utils.results " + " ".join(map(str, stale)) + ")")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
