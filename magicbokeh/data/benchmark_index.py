"""On-disk benchmark format shared by the builders (``scripts/make_dataset.py``) and the evaluation runner.

A benchmark is a folder with ``index.json``::

    {"name": "synthetic", "version": 1, "meta": {...how it was built...},
     "samples": [{"id": "scene0003_f0.42_K16", "task": "bokeh",
                  "lq": "lq/scene0003_f0.42_K16.png",          # degraded input at target size (required)
                  "target": "target/scene0003_f0.42_K16.png",  # ground truth; null for no-reference sets
                  "hq": "hq/scene0003.png",                    # clean all-in-focus HQ (optional)
                  "disparity": "disparity/scene0003.npy",      # clean disparity in [0, 1] (optional)
                  "mask": "mask/scene0003.png",                # subject/focus mask (optional)
                  "focus_disparity": 0.42, "K": 16.0}, ...]}

Paths are relative to the folder and may not leave it (no absolute paths, no ``..``); a sample id names files in
the evaluation's run directory, so it is a plain file name (no separators, not ``.``/``..``). ``task`` is
``"bokeh"`` or ``"sr"`` (SR samples have K = 0). ``focus_disparity`` may be null when the focus is chosen at
evaluation time (e.g. the median of an estimated disparity inside ``mask``). ``meta`` records how the benchmark was
built; builders that degrade images store ``degradation_preset`` and ``degradation`` (the settings) there, in the
form checkpoints record their training degradation, so evaluation can flag a mismatch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from magicbokeh.errors import DatasetError
from magicbokeh.utils.files import atomic_write_text

INDEX_NAME = "index.json"
FORMAT_VERSION = 1
TASKS = ("bokeh", "sr")
FILE_KEYS = ("lq", "target", "hq", "disparity", "mask")


@dataclass(frozen=True)
class BenchmarkSample:
    """One evaluation case; paths are absolute after loading."""

    id: str
    task: str
    lq: Path
    target: Path | None = None
    hq: Path | None = None
    disparity: Path | None = None
    mask: Path | None = None
    focus_disparity: float | None = 0.0
    K: float = 0.0
    extra: dict = field(default_factory=dict)


def check_sample_id(sample_id: str) -> str:
    """Return ``sample_id`` if it is a plain file name; raise :class:`DatasetError` otherwise.

    Ids become file names in the run directory (``predictions/<method>/seed<k>/<id>.png``), so a separator, ``..``
    or an absolute path would write outside it.
    """
    if (
        not sample_id
        or sample_id in (".", "..")
        or any(separator in sample_id for separator in ("/", "\\", "\x00"))
        or PureWindowsPath(sample_id).drive
    ):
        raise DatasetError(
            f"sample id {sample_id!r} is not a plain file name (ids name files in the run directory: no '/', '\\', "
            "'..' or drive)"
        )
    return sample_id


def resolve_relative(root: Path, relative: str, what: str) -> Path:
    """``root / relative`` for a path that stays inside ``root``: relative (no root, no drive), without ``..``
    (checked lexically, so a benchmark may hold symbolic links to its files)."""
    text = str(relative)
    windows = PureWindowsPath(text)
    if not text or PurePosixPath(text).is_absolute() or windows.drive or windows.root or ".." in windows.parts:
        raise DatasetError(
            f"{what} path {text!r} leaves the benchmark folder '{root}': index paths must be relative to it, "
            "without '..'"
        )
    return root / text


def load_benchmark_index(root: str | os.PathLike) -> tuple[dict, list[BenchmarkSample]]:
    """Read ``<root>/index.json`` → (header without samples, samples with absolute paths); checks files exist."""
    root = Path(root)
    index_path = root / INDEX_NAME
    if not index_path.is_file():
        raise DatasetError(
            f"'{root}' is not a benchmark folder: '{index_path}' is missing (build one with scripts/make_dataset.py)"
        )
    try:
        raw = json.loads(index_path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"'{index_path}' is not valid JSON: {error}") from error
    samples = []
    seen: set[str] = set()
    for number, entry in enumerate(raw.get("samples", [])):
        try:
            sample_id, task = str(entry["id"]), entry["task"]
        except KeyError as error:
            raise DatasetError(f"'{index_path}': sample #{number} lacks the key {error}") from error
        check_sample_id(sample_id)
        if sample_id in seen:
            raise DatasetError(f"'{index_path}': sample id '{sample_id}' appears twice (ids name prediction files)")
        seen.add(sample_id)
        if task not in TASKS:
            raise DatasetError(f"'{index_path}': sample '{sample_id}' has task '{task}', expected one of {TASKS}")
        paths = {}
        for key in FILE_KEYS:
            relative = entry.get(key)
            if relative is None:
                paths[key] = None
                continue
            path = resolve_relative(root, relative, f"sample '{sample_id}': {key}")
            if not path.is_file():
                raise DatasetError(f"benchmark '{root.name}': sample '{sample_id}' names missing file '{path}'")
            paths[key] = path
        if paths["lq"] is None:
            raise DatasetError(f"'{index_path}': sample '{sample_id}' has no 'lq' input")
        known = {"id", "task", *FILE_KEYS, "focus_disparity", "K"}
        focus = entry.get("focus_disparity", 0.0)
        samples.append(
            BenchmarkSample(
                id=sample_id,
                task=task,
                focus_disparity=None if focus is None else float(focus),
                K=float(entry.get("K", 0.0)),
                extra={k: v for k, v in entry.items() if k not in known},
                **paths,
            )
        )
    if not samples:
        raise DatasetError(f"benchmark index '{index_path}' lists no samples")
    header = {k: v for k, v in raw.items() if k != "samples"}
    return header, samples


def write_benchmark_index(root: str | os.PathLike, name: str, samples: list[BenchmarkSample], meta: dict) -> Path:
    """Write ``<root>/index.json`` atomically with paths stored relative to ``root``."""
    root = Path(root)
    entries = []
    for sample in samples:
        check_sample_id(sample.id)
        entry = asdict(sample)
        extra = entry.pop("extra")
        for key in FILE_KEYS:
            if entry[key] is not None:
                entry[key] = Path(entry[key]).resolve().relative_to(root.resolve()).as_posix()
        entries.append({**entry, **extra})
    payload = {"name": name, "version": FORMAT_VERSION, "meta": meta, "samples": entries}
    atomic_write_text(root / INDEX_NAME, json.dumps(payload, indent=1))
    return root / INDEX_NAME
