"""Experiment tracking through accelerate's trackers: ``metrics.jsonl`` (always) and Weights & Biases (optional).

``Accelerator(log_with=...)`` gets :class:`JsonlTracker` (the source of truth: one ``{"step": ..., **values}`` line per
``accelerator.log`` call, flushed at once, so a killed run keeps everything logged before the kill) and, with
``logger=wandb``, accelerate's own ``WandBTracker`` (offline by default: training machines often have no network;
``wandb sync <run_dir>/wandb/offline-*`` uploads later). accelerate calls trackers on the main process only.

A run's identity is a stored id, not a folder name: :func:`run_uid` writes a fresh UUID to ``<run_dir>/run_uid``
when a run starts and reads it back when it resumes, and that id is the wandb run id. Two jobs of a sweep, two
tasks with the same ``run_id``, or a run restarted from scratch in an old folder never share a tracker id.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate.tracking import GeneralTracker, on_main_process

from magicbokeh.errors import ConfigError
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

METRICS_FILE = "metrics.jsonl"
RUN_UID_FILE = "run_uid"
LOGGERS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "disabled")


def run_uid(run_dir: str | os.PathLike, resuming: bool) -> str:
    """This run's tracker id: the one stored in ``run_dir`` when ``resuming`` (if any), else a new one, stored."""
    path = Path(run_dir) / RUN_UID_FILE
    if resuming and path.is_file():
        return path.read_text(encoding="utf-8").strip()
    uid = uuid.uuid4().hex
    atomic_write_text(path, uid + "\n")
    return uid


def _to_json_number(value: Any) -> Any:
    """Tensors and NumPy scalars → Python numbers; NaN/Inf → None (strict JSON has no NaN)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item() if value.numel() == 1 else value.detach().float().tolist()
    elif hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlTracker(GeneralTracker):
    """``<run_dir>/metrics.jsonl`` as an accelerate tracker.

    ``resume_step``: None for a new run (the file starts empty); else the checkpoint step the run resumes from, and
    records logged after that step (by the run that was interrupted) are dropped before logging continues, so no
    step appears twice.
    """

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None) -> None:
        super().__init__()
        self.path = Path(run_dir) / METRICS_FILE
        self.resume_step = resume_step
        self._file = None

    @on_main_process
    def start(self) -> None:
        if self.resume_step is None:
            if self.path.is_file() and self.path.stat().st_size:
                logger.warning("a new run in %s: its earlier %s is replaced", self.path.parent, self.path.name)
            kept: list[str] = []
        else:
            kept = [json.dumps(r) for r in read_metrics(self.path.parent) if r["step"] <= self.resume_step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        # Line-buffered: each record reaches the file as it is logged.
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")

    @property
    def tracker(self):
        return self._file

    @on_main_process
    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs) -> None:
        record = {"step": int(step or 0), **{key: _to_json_number(value) for key, value in values.items()}}
        self._file.write(json.dumps(record) + "\n")

    @on_main_process
    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl``, in order (tests, reports)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tracker_settings(
    logger_cfg: Mapping[str, Any], run_dir: str | os.PathLike, uid: str | None, resume_step: int | None
) -> tuple[list, dict[str, Any]]:
    """``(log_with, init_kwargs)`` for ``Accelerator(log_with=...)`` and ``init_trackers(init_kwargs=...)`` from the
    ``logger`` config node (``name``: wandb | none; wandb: ``project``, ``entity``, ``mode``, ``tags``)."""
    name = str(logger_cfg.get("name", "none"))
    if name not in LOGGERS:
        raise ConfigError(f"unknown logger '{name}': use logger=wandb or logger=none")
    log_with: list = [JsonlTracker(run_dir, resume_step)]
    init_kwargs: dict[str, Any] = {}
    if name == "wandb":
        mode = str(logger_cfg.get("mode", "offline"))
        if mode not in WANDB_MODES:
            raise ConfigError(f"logger.mode must be one of {WANDB_MODES}, got '{mode}'")
        log_with.append("wandb")
        init_kwargs["wandb"] = {
            "entity": logger_cfg.get("entity"),
            "mode": mode,
            "tags": list(logger_cfg.get("tags") or []),
            "dir": str(run_dir),
            "name": Path(run_dir).name,
            "id": uid,
            "resume": "allow",  # a resumed run (same id) continues its wandb run
        }
    return log_with, init_kwargs


def log_image(accelerator, name: str, path: str | os.PathLike, step: int) -> None:
    """Record an image already written to ``path`` (a validation grid): a JSONL pointer, and wandb media."""
    accelerator.log({f"image/{name}": str(path)}, step=step)
    if accelerator.is_main_process and any(tracker.name == "wandb" for tracker in accelerator.trackers):
        accelerator.get_tracker("wandb").log_images({name: [str(path)]}, step=step)
