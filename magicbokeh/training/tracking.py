"""Experiment tracking: every number goes to ``<run_dir>/metrics.jsonl`` and, optionally, to Weights & Biases.

The JSONL file is the source of truth (one ``{"step": ..., **metrics}`` object per line, appended and flushed at
once, so a killed run keeps everything logged before the kill). wandb runs offline by default because training
machines often have no network; ``wandb sync <run_dir>/wandb/offline-*`` uploads later. Only the main process
writes anything: on other ranks every method is a no-op, so callers never branch on the rank themselves.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from magicbokeh.errors import ConfigError
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

METRICS_FILE = "metrics.jsonl"


def _to_json_number(value: Any) -> Any:
    """Tensors and NumPy scalars → Python numbers; NaN/Inf → None (strict JSON has no NaN)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item() if value.numel() == 1 else value.detach().float().tolist()
    elif hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Tracker:
    """Log scalars and images for one run.

    Args:
        run_dir: the run directory (created if missing); ``metrics.jsonl`` lives here.
        logger_cfg: the ``logger`` config node as a dict: ``name`` is ``"wandb"`` or ``"none"``; for wandb also
            ``project``, ``entity``, ``mode`` (``offline`` by default), ``tags``.
        config: the resolved run config (stored with the wandb run).
        is_main_process: False on every rank but 0; the tracker then does nothing.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        logger_cfg: Mapping[str, Any],
        config: Mapping[str, Any],
        is_main_process: bool,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.is_main_process = is_main_process
        self._wandb_run = None
        self._metrics_file = None
        if not is_main_process:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Line-buffered append: a resumed run continues the same file, and each line hits the disk when written.
        self._metrics_file = open(self.run_dir / METRICS_FILE, "a", buffering=1, encoding="utf-8")
        name = str(logger_cfg.get("name", "none"))
        if name == "wandb":
            self._wandb_run = self._start_wandb(logger_cfg, config)
        elif name != "none":
            raise ConfigError(f"unknown logger '{name}': use logger=wandb or logger=none")

    def _start_wandb(self, logger_cfg: Mapping[str, Any], config: Mapping[str, Any]):
        import wandb

        mode = str(logger_cfg.get("mode", "offline"))
        if mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"logger.mode must be offline, online or disabled, got '{mode}'")
        return wandb.init(
            project=logger_cfg.get("project", "magicbokeh"),
            entity=logger_cfg.get("entity"),
            mode=mode,
            tags=list(logger_cfg.get("tags") or []),
            dir=str(self.run_dir),
            name=self.run_dir.name,
            config=dict(config),
            # One wandb run per run directory: a resumed training run continues the same wandb run.
            id=self.run_dir.name[-64:],
            resume="allow",
        )

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Append ``{"step": step, **metrics}`` to ``metrics.jsonl`` (and send the metrics to wandb)."""
        if not self.is_main_process:
            return
        record = {"step": int(step), **{key: _to_json_number(value) for key, value in metrics.items()}}
        self._metrics_file.write(json.dumps(record) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log({key: value for key, value in record.items() if key != "step"}, step=int(step))

    def log_image(self, name: str, path: str | os.PathLike, step: int) -> None:
        """Record an image already written to ``path`` (a validation grid): wandb media + a JSONL pointer."""
        if not self.is_main_process:
            return
        path = Path(path)
        self.log({f"image/{name}": str(path)}, step)
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({name: wandb.Image(str(path))}, step=int(step))

    def close(self) -> None:
        """Flush and close the metrics file and finish the wandb run (safe to call twice)."""
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl``, in order (tests, reports)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
