"""A run directory's manifest: what its predictions and scores were made from, so stale results are never reused.

``<run_dir>/manifest.json`` holds

- ``predictions``: everything that decides a prediction — the benchmark (its folder and the sha256 of its
  ``index.json``) and the input protocol, then the components a call may or may not use (null when it does not):
  the checkpoint (sha256 of ``model.safetensors`` + ``config.json``), the model methods' pipeline settings
  (with whether the VAE posterior is sampled), the classical renderer and the depth model;
- ``scores``: what decides a score besides the prediction (crop border, metric weight folders);
- ``code`` (commit and dirty flag) and ``config`` (the resolved eval config) of the call that predicted: for the
  record, not compared.

A call compares the sections its stages depend on with the stored ones: predicting compares ``predictions``; scoring
or reporting alone compares the benchmark and input (and the checkpoint when ``ckpt`` is given); scoring compares
``scores`` too. A difference is refused with a :class:`StaleRunError` naming the keys, unless ``overwrite=true``
and the call redoes what differs: it then clears what its stages write (predicting: predictions, cached
disparity, scores and the report; scoring: scores and the report) before recording the new manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from magicbokeh.data.benchmark_index import INDEX_NAME
from magicbokeh.errors import ConfigError
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

MANIFEST_NAME = "manifest.json"
PREDICTION_OUTPUTS = ("predictions", "disparity")
SCORE_OUTPUTS = ("per_image.csv", "summary.json", "table.md", "report.md", "plots", "grids")
# The keys of the predictions section that a score- or report-only call still depends on.
DATA_KEYS = ("benchmark", "protocol")
# Components a call may not use (null in its manifest): nothing to compare then, and the stored record stays.
OPTIONAL_KEYS = ("checkpoint", "pipeline", "renderer", "depth_model")


class StaleRunError(ConfigError):
    """The run directory holds results made under another manifest (checkpoint, benchmark, settings)."""


def sha256_of_files(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 over the files' names and contents, in order (read in 1 MiB blocks: checkpoints can be large).

    A ``.safetensors`` file counts by its content: its JSON header with sorted keys, then its tensor bytes. The
    library writes the header's metadata from a hash map, in an order that changes from one process to the next, so
    two saves of the same weights may differ in their raw bytes while holding the same content."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            if path.suffix == ".safetensors":
                header_length = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(header_length))
                digest.update(json.dumps(header, sort_keys=True).encode())
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def checkpoint_record(ckpt: str | os.PathLike | None) -> dict | None:
    """The checkpoint's identity: its content hash (weights + config), and where it was read from."""
    if ckpt is None:
        return None
    folder = Path(ckpt)
    files = [folder / "model.safetensors", folder / "config.json"]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise ConfigError(f"checkpoint folder '{folder}' lacks {', '.join(missing)}")
    return {"sha256": sha256_of_files(files), "path": str(folder.resolve())}


def benchmark_record(root: str | os.PathLike, name: str) -> dict:
    """The benchmark's identity: its name, folder and the hash of its ``index.json`` (rebuilt ⇒ different)."""
    root = Path(root)
    return {"name": name, "root": str(root.resolve()), "index_sha256": sha256_of_files([root / INDEX_NAME])}


def build_manifest(
    *,
    benchmark: dict,
    protocol: dict,
    checkpoint: dict | None = None,
    pipeline: dict | None = None,
    renderer: dict | None = None,
    depth_model: dict | None = None,
    scores: dict | None = None,
    code: dict | None = None,
    config: dict | None = None,
) -> dict:
    """Assemble a manifest from its parts (see the module docstring); a component this call does not use is None."""
    return {
        "predictions": {
            "benchmark": benchmark,
            "protocol": protocol,
            "checkpoint": checkpoint,
            "pipeline": pipeline,
            "renderer": renderer,
            "depth_model": depth_model,
        },
        "scores": scores or {},
        "code": code or {},
        "config": config or {},
    }


def read_manifest(run_dir: str | os.PathLike) -> dict | None:
    path = Path(run_dir) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise StaleRunError(f"'{path}' is not valid JSON ({error}); rerun with overwrite=true") from error


def _differences(stored: dict, current: dict, keys: Sequence[str], prefix: str) -> list[str]:
    found = []
    for key in keys:
        old, new = stored.get(key), current.get(key)
        if key in OPTIONAL_KEYS and (old is None or new is None):
            continue  # no prediction on disk used it, or this call does not use it: nothing to compare
        if key == "checkpoint" and old["sha256"] == new["sha256"]:
            continue  # the same weights, wherever they are read from
        if old != new:
            found.append(f"{prefix}{key}: {_short(old)} -> {_short(new)}")
    return found


def _short(value: Any) -> str:
    if isinstance(value, dict) and "sha256" in value:
        return f"sha256 {value['sha256'][:12]} ({value.get('path', '')})"
    if isinstance(value, dict) and "index_sha256" in value:
        return f"{value.get('name')} at {value.get('root')} (index sha256 {value['index_sha256'][:12]})"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


def _existing(run_dir: Path, names: Sequence[str]) -> list[str]:
    return [name for name in names if (run_dir / name).exists()]


def check_manifest(run_dir: str | os.PathLike, manifest: dict, stages: Sequence[str], *, overwrite: bool) -> bool:
    """Raise :class:`StaleRunError` when this call would mix results of different manifests; returns whether the
    run directory must be cleared first (``overwrite`` given and something this call writes is on disk).

    ``overwrite`` lifts the checks on what this call redoes, never on what it reads: scoring alone still needs the
    predictions on disk to come from this benchmark and checkpoint. Reads only, so every process of a multi-process
    launch can call it before one of them writes.
    """
    run_dir = Path(run_dir)
    predicting, scoring = "predict" in stages, "score" in stages
    stored = read_manifest(run_dir)
    current = manifest["predictions"]
    problems: list[str] = []
    if stored is None:
        present = _existing(run_dir, PREDICTION_OUTPUTS + SCORE_OUTPUTS)
        if present and not (overwrite and predicting):
            raise StaleRunError(
                f"'{run_dir}' holds results ({', '.join(present)}) but no {MANIFEST_NAME}, so what made them is "
                "unknown: use a new run_id, or rerun the predict stage with overwrite=true"
            )
    elif not predicting:
        problems = _differences(stored.get("predictions", {}), current, [*DATA_KEYS, "checkpoint"], "")
    elif not overwrite:
        problems = _differences(stored.get("predictions", {}), current, list(current), "")
    if stored is not None and scoring and not overwrite and _existing(run_dir, SCORE_OUTPUTS):
        old, new = stored.get("scores", {}), manifest.get("scores", {})
        problems += _differences(old, new, sorted(set(old) | set(new)), "scores.")
    if problems:
        remedy = "overwrite=true to clear and redo them" if predicting else "the predict stage with overwrite=true"
        raise StaleRunError(
            f"'{run_dir}' holds results made under another manifest ({'; '.join(problems)}): use a new run_id, or "
            f"{remedy}"
        )
    owned = (PREDICTION_OUTPUTS if predicting else ()) + (SCORE_OUTPUTS if scoring or predicting else ())
    return overwrite and bool(_existing(run_dir, owned))


def clear_outputs(run_dir: str | os.PathLike, stages: Sequence[str]) -> list[str]:
    """Delete what the given stages write (``overwrite=true``); returns the names removed."""
    run_dir = Path(run_dir)
    names = list(PREDICTION_OUTPUTS if "predict" in stages else ()) + list(SCORE_OUTPUTS)
    removed = []
    for name in _existing(run_dir, names):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        removed.append(name)
    if removed:
        logger.warning("overwrite=true: removed %s from %s", ", ".join(removed), run_dir)
    return removed


def record_manifest(
    run_dir: str | os.PathLike, manifest: dict, stages: Sequence[str], *, replace: bool = False
) -> Path:
    """Write the manifest after :func:`check_manifest` (and :func:`clear_outputs`) accepted this call.

    A call that does not predict keeps the stored ``predictions``, ``code`` and ``config`` (they describe the
    predictions on disk), one that does not score keeps the stored ``scores``; a predicting call without a
    checkpoint keeps the stored one (the model's predictions are still on disk). ``replace``: ignore what was
    stored (after an overwrite that cleared the predictions).
    """
    run_dir = Path(run_dir)
    stored = {} if replace else read_manifest(run_dir) or {}
    document = dict(manifest)
    if "predict" in stages:
        predictions = dict(manifest["predictions"])
        for key in OPTIONAL_KEYS:  # what earlier predictions on disk used stays recorded
            if predictions.get(key) is None:
                predictions[key] = stored.get("predictions", {}).get(key)
        document["predictions"] = predictions
    elif "predictions" in stored:
        # The stored sections describe the predictions on disk, and the call and code that made them.
        for key in ("predictions", "code", "config"):
            document[key] = stored.get(key, document[key])
    if "score" not in stages and "scores" in stored:
        document["scores"] = stored["scores"]
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / MANIFEST_NAME, json.dumps(document, indent=1, sort_keys=True, default=str) + "\n")
    return run_dir / MANIFEST_NAME
