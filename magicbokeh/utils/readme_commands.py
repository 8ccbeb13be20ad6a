"""The README's shell commands as data, and how each one is run by the docs test.

Every line of a ```` ```bash ```` block in ``README.md`` is a command (continuation lines joined, ``# comments``
dropped). ``docs/readme_commands.yaml`` says, for each of them, how it is run here: as written, with tiny settings
appended (``append``) or some words replaced (``replace``; placeholders such as ``CKPT_DIR`` become a tiny checkpoint
the test makes), and what must come of it (``expect: ok``, or an ``error:`` line and exit code for a command that
needs weights, data, a GPU or a cluster this machine lacks). A command may instead be ``served`` (a web app: it must
answer on its port) or ``not_run`` with the reason. ``tests/test_readme_commands.py`` runs the plan;
``python scripts/benchmark.py readme`` runs it too and writes each command's exit code and wall time to
``results/readme_commands.json``.

Words of a command are substituted, then ``{tmp}`` (a scratch folder), ``{ckpt}``, ``{port}`` and ``{python}`` are
filled in; ``python`` becomes this interpreter and ``accelerate`` / ``torchrun`` the ones beside it, so that the
commands run in the environment the tests run in. A ``make`` target is checked with ``make -n`` against the commands
it must run (``make_runs``), which the plan runs as their own steps.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from magicbokeh.utils.serving import free_port, stop_process, wait_until_serving

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
PLAN_FILE = REPO_ROOT / "docs" / "readme_commands.yaml"
_BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class ReadmeCommand:
    """One command of the README: where it starts and its words (as the shell would split them)."""

    line: int
    words: tuple[str, ...]

    @property
    def text(self) -> str:
        return shlex.join(self.words)


def readme_commands(text: str) -> list[ReadmeCommand]:
    """The commands of every bash block of a Markdown text, in order."""
    commands = []
    for block in _BASH_BLOCK.finditer(text):
        first_line = text.count("\n", 0, block.start()) + 2
        pending, start = "", None
        for offset, line in enumerate(block.group(1).splitlines()):
            if start is None:
                start = first_line + offset
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            words = shlex.split(pending + line, comments=True)
            if words:
                commands.append(ReadmeCommand(start, tuple(words)))
            pending, start = "", None
    return commands


@dataclass(frozen=True)
class Step:
    """How the docs test runs one README command (one entry of ``docs/readme_commands.yaml``)."""

    command: tuple[str, ...]
    replace: dict[str, str] = field(default_factory=dict)
    append: tuple[str, ...] = ()
    expect: str = "ok"  # ok | error | served | not_run
    error: str | None = None  # a regular expression the `error:` line must match
    exit_code: int = 2
    reason: str | None = None  # why a not_run command is not run, and what runs instead
    timeout_s: float = 600.0
    needs: tuple[str, ...] = ()  # README commands whose outputs this one reads (run first)
    make_runs: tuple[str, ...] = ()  # a make target's commands (checked with `make -n`; the commands run elsewhere)
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables ({...} fields filled in)
    keep_results_dir: bool = False  # read/write the committed results/ (default: a scratch folder)
    launcher_traceback: bool = False  # accelerate launch re-raises a failed script as its own traceback

    @property
    def text(self) -> str:
        return shlex.join(self.command)


def load_plan(path: Path = PLAN_FILE) -> list[Step]:
    """The steps of the plan file, one per README command, in README order."""
    document = yaml.safe_load(path.read_text())
    steps = []
    for entry in document["commands"]:
        entry = dict(entry)
        command = tuple(shlex.split(entry.pop("run"), comments=True))
        entry["append"] = tuple(entry.get("append", ()))
        entry["needs"] = tuple(_normalised(need) for need in entry.get("needs", ()))
        entry["make_runs"] = tuple(entry.get("make_runs", ()))
        steps.append(Step(command=command, **entry))
    return steps


def _normalised(command: str) -> str:
    return shlex.join(shlex.split(command, comments=True))


def unplanned(commands: list[ReadmeCommand], steps: list[Step]) -> tuple[list[str], list[str]]:
    """README commands the plan lacks, and planned commands the README no longer has."""
    documented = [command.text for command in commands]
    planned = [step.text for step in steps]
    return [c for c in documented if c not in planned], [p for p in planned if p not in documented]


def command_words(step: Step, fill: dict[str, str]) -> list[str]:
    """The words to execute: substitutions, then the ``{...}`` fields, then this environment's interpreters."""
    words = [step.replace.get(word, word) for word in step.command]
    words = [word for word in words if word]  # a word replaced by "" is dropped
    words = [word.replace("outputs/", "{tmp}/outputs/") if "outputs/" in word else word for word in words]
    words += list(step.append)
    words = [word.format(**fill) for word in words]
    bin_dir = Path(sys.executable).parent
    if words[0] == "python":
        words[0] = sys.executable
    elif words[0] in ("accelerate", "torchrun"):
        words[0] = str(bin_dir / words[0])
    return words


@dataclass
class Outcome:
    """What one step did: the words run, its exit code (None: not run / served), seconds, and the last output."""

    step: Step
    words: list[str]
    exit_code: int | None
    seconds: float
    output: str

    def problem(self) -> str | None:
        """Why this outcome is not what the plan expects (None when it is)."""
        step = self.step
        if step.expect == "not_run":
            return None
        if step.expect == "served":
            return None if self.exit_code is None else f"the server exited with {self.exit_code}"
        if step.expect == "ok":
            return None if self.exit_code == 0 else f"exit {self.exit_code}"
        errors = [line for line in self.output.splitlines() if line.startswith("error: ")]
        if self.exit_code != step.exit_code:
            return f"exit {self.exit_code}, expected {step.exit_code}"
        if len(errors) != 1:
            return f"{len(errors)} 'error:' lines, expected one"
        if step.error and not re.search(step.error, errors[0]):
            return f"the error line does not match {step.error!r}: {errors[0]}"
        if "Traceback" in self.output and not step.launcher_traceback:
            return "a traceback was printed"
        return None


def environment(step: Step, fill: dict[str, str], scratch: Path) -> dict[str, str]:
    """Offline, one thread per process, results files into the scratch folder (never the committed ones unless the
    step reads them), plus the step's own variables."""
    from magicbokeh.utils.results import RESULTS_DIR_ENV

    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="offline",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        GRADIO_TEMP_DIR=str(scratch / "gradio"),
        PYTHONUNBUFFERED="1",
    )
    if step.keep_results_dir:
        env.pop(RESULTS_DIR_ENV, None)
    else:
        env[RESULTS_DIR_ENV] = str(scratch / "results")
    env.update({name: value.format(**fill) for name, value in step.env.items()})
    return env


def run_step(step: Step, fill: dict[str, str], scratch: Path) -> Outcome:
    """Run one step from the repository root and report what it did (a served app is stopped once it answers)."""
    if step.expect == "not_run":
        return Outcome(step, [], None, 0.0, step.reason or "")
    fill = {"port": str(free_port()), "python": sys.executable, "tmp": str(scratch), **fill}
    words = command_words(step, fill)
    env = environment(step, fill, scratch)
    started = time.perf_counter()
    if step.expect == "served":
        return _serve(step, words, env, fill["port"], started, scratch)
    try:
        done = subprocess.run(words, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=step.timeout_s)
    except subprocess.TimeoutExpired as timeout:
        output = (timeout.stdout or b"")[-4000:]
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        return Outcome(step, words, -1, time.perf_counter() - started, f"timed out after {step.timeout_s} s\n{text}")
    return Outcome(step, words, done.returncode, time.perf_counter() - started, (done.stdout + done.stderr)[-6000:])


def _serve(step: Step, words: list[str], env: dict[str, str], port: str, started: float, scratch: Path) -> Outcome:
    log_path = scratch / f"server_{port}.log"
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "w") as log:
        process = subprocess.Popen(words, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        remaining = step.timeout_s - (time.perf_counter() - started)
        if wait_until_serving(url, process, remaining):
            return Outcome(step, words, None, time.perf_counter() - started, f"answered on {url}")
        code = process.poll()
        return Outcome(step, words, -1 if code is None else code, time.perf_counter() - started, log_path.read_text())
    finally:
        stop_process(process)


def describe(step: Step) -> str:
    """How a step is run, in words (the results file's column)."""
    if step.expect == "not_run":
        return f"not run: {step.reason}"
    changes = [f"{old} → {new}" for old, new in step.replace.items()]
    if step.append:
        changes.append("+ " + " ".join(step.append))
    how = {"ok": "runs", "error": "refuses", "served": "serves"}[step.expect]
    return how + (f" ({'; '.join(changes)})" if changes else " as written")


def plan_summary(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """One JSON-able record per outcome (the results file's figures)."""
    return [
        {
            "command": outcome.step.text,
            "how": describe(outcome.step),
            "exit_code": outcome.exit_code,
            "seconds": round(outcome.seconds, 2),
            "as_expected": outcome.problem() is None,
        }
        for outcome in outcomes
    ]


# The README command whose tiny run writes {ckpt}: every step that names {ckpt} needs it first.
CHECKPOINT_STEP = "python scripts/train.py experiment=smoke"
CHECKPOINT_DIR = "outputs/smoke/readme/final"  # under {tmp}: its run_id=readme and paths.output_dir={tmp}/outputs


class PlanRunner:
    """Runs steps of the plan once each in one scratch folder, a step's ``needs`` (and the checkpoint step for a
    step that names ``{ckpt}``) first; ``run(step)`` returns the (cached) outcome."""

    def __init__(self, steps: list[Step], scratch: Path):
        self.steps = {step.text: step for step in steps}
        self.scratch = Path(scratch)
        self.fill = {"ckpt": str(self.scratch / CHECKPOINT_DIR)}
        self.outcomes: dict[str, Outcome] = {}

    def dependencies(self, step: Step) -> list[Step]:
        names = list(step.needs)
        if any("{ckpt}" in word for word in [*step.replace.values(), *step.append]):
            names.insert(0, CHECKPOINT_STEP)
        missing = [name for name in names if name not in self.steps]
        if missing:
            raise KeyError(f"{step.text!r} needs commands the plan does not have: {missing}")
        return [self.steps[name] for name in names]

    def run(self, step: Step) -> Outcome:
        if step.text not in self.outcomes:
            for dependency in self.dependencies(step):
                before = self.run(dependency)
                if before.problem():
                    return Outcome(step, [], None, 0.0, f"not run: {dependency.text!r} failed ({before.problem()})")
            self.outcomes[step.text] = run_step(step, self.fill, self.scratch)
        return self.outcomes[step.text]


def make_dry_run(target: str) -> str:
    """What ``make -n <target>`` prints (the commands, nothing run)."""
    done = subprocess.run(["make", "-n", target], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def main(argv: list[str]) -> int:
    """``python scripts/benchmark.py readme``: run every README command as the docs test does and write each one's
    exit code and wall time to ``results/readme_commands.json``; exit 1 when one did not do what the plan expects."""
    import tempfile

    from magicbokeh.utils.cli import ArgumentParser
    from magicbokeh.utils.progress import progress_bar
    from magicbokeh.utils.results import Table, add_results_option, chosen_results_name, write_results

    parser = ArgumentParser(prog="benchmark.py readme", description=main.__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, metavar="TEXT", help="run the commands containing TEXT")
    add_results_option(parser, "readme_commands")
    args = parser.parse_args(argv)
    plan = load_plan()
    steps = [step for step in plan if not args.only or any(text in step.text for text in args.only)]
    lines = {command.text: command.line for command in readme_commands(README.read_text())}
    with tempfile.TemporaryDirectory(prefix="readme_commands_") as scratch:
        runner = PlanRunner(plan, Path(scratch))  # the whole plan: a chosen step's needs may be outside --only
        outcomes = [runner.run(step) for step in progress_bar(steps, desc="README commands", unit="command")]
    rows = []
    for outcome, record in zip(outcomes, plan_summary(outcomes)):
        seconds = record["seconds"] if outcome.step.expect != "not_run" else None
        rows.append([lines.get(record["command"]), record["command"], record["how"], record["exit_code"], seconds,
                     record["as_expected"]])  # fmt: skip
        if outcome.problem():
            print(f"NOT AS EXPECTED: {record['command']}\n  {outcome.problem()}\n{outcome.output[-1500:]}")
    table = Table(["README line", "command", "how it runs here", "exit", "seconds", "as expected"], rows,
                  ["", "", "", "", ".1f", ""])  # fmt: skip
    print(table.markdown())
    total = sum(outcome.seconds for outcome in outcomes)
    unexpected = [outcome.step.text for outcome in outcomes if outcome.problem()]
    print(f"{len(outcomes)} commands, {total:.0f} s in all; {len(unexpected)} not as expected")
    name = chosen_results_name(args.results)
    if name:
        figures = {"commands": plan_summary(outcomes), "total_seconds": total, "not_as_expected": unexpected}
        path = write_results(
            name, figures, title="every README command as the docs test runs it: exit code and wall time",
            tables={"commands": table}, seed=None,
            notes="'runs (… + args)': the README command with tiny settings appended (steps, sizes); 'as written': "
            "unchanged but for output folders; 'refuses': the one-line error it must give on a machine without the "
            "weights, data, GPU or cluster it needs. Each run includes starting Python and importing torch.",
        )  # fmt: skip
        print(f"wrote {path}")
    return 1 if unexpected else 0
