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

Paths are relative to the folder. ``task`` is ``"bokeh"`` or ``"sr"`` (SR samples have K = 0).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from magicbokeh.errors import DatasetError
from magicbokeh.utils.files import atomic_write_text

INDEX_NAME = "index.json"
FORMAT_VERSION = 1
TASKS = ("bokeh", "sr")


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
    focus_disparity: float = 0.0
    K: float = 0.0
    extra: dict = field(default_factory=dict)


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
    for number, entry in enumerate(raw.get("samples", [])):
        try:
            sample_id, task = str(entry["id"]), entry["task"]
        except KeyError as error:
            raise DatasetError(f"'{index_path}': sample #{number} lacks the key {error}") from error
        if task not in TASKS:
            raise DatasetError(f"'{index_path}': sample '{sample_id}' has task '{task}', expected one of {TASKS}")
        paths = {}
        for key in ("lq", "target", "hq", "disparity", "mask"):
            relative = entry.get(key)
            if relative is None:
                paths[key] = None
                continue
            path = root / relative
            if not path.is_file():
                raise DatasetError(f"benchmark '{root.name}': sample '{sample_id}' names missing file '{path}'")
            paths[key] = path
        if paths["lq"] is None:
            raise DatasetError(f"'{index_path}': sample '{sample_id}' has no 'lq' input")
        known = {"id", "task", "lq", "target", "hq", "disparity", "mask", "focus_disparity", "K"}
        samples.append(
            BenchmarkSample(
                id=sample_id,
                task=task,
                focus_disparity=float(entry.get("focus_disparity", 0.0)),
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
        entry = asdict(sample)
        extra = entry.pop("extra")
        for key in ("lq", "target", "hq", "disparity", "mask"):
            if entry[key] is not None:
                entry[key] = Path(entry[key]).resolve().relative_to(root.resolve()).as_posix()
        entries.append({**entry, **extra})
    payload = {"name": name, "version": FORMAT_VERSION, "meta": meta, "samples": entries}
    atomic_write_text(root / INDEX_NAME, json.dumps(payload, indent=1))
    return root / INDEX_NAME
