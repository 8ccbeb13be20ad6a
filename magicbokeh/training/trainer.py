"""The training loop: alternating bokeh / SR phases, one optimizer per phase (REFERENCE §1.4, DESIGN §1).

Read :meth:`Trainer.fit` first; everything else is a named helper around it. One *step* is one optimizer update
of the current phase: ``grad_accum_steps`` micro-batches, all drawn from that phase's data stream (accumulating
across a phase switch would mix the two tasks' gradients in one update).

Multi-GPU: a phase trains only its own parameter group, so under DDP the other groups get no gradient on some
steps. We wrap the whole model once, with every trainable group marked ``requires_grad`` so DDP registers them,
and let ``find_unused_parameters=True`` discover per step which ones the phase left out (their gradients stay
``None`` and their phase's optimizer is not stepped). The alternative, one DDP wrapper per phase, would hold one
set of gradient buckets per phase and complicate checkpointing; the graph walk costs little next to a UNet pass.

Mixed precision (``trainer.mixed_precision``: accelerate's autocast, plus its GradScaler under fp16) and non-finite
updates: :func:`~magicbokeh.training.optim.guarded_update` unscales only the stepped optimizer (the SR LoRA belongs
to two of them), then checks the rank-averaged loss and the all-reduced gradient norm *before* stepping; a
non-finite update is skipped on every rank alike (weights, optimizer state and LR schedule untouched, the step
counter advances), counted as ``skipped_steps`` in the logs, and ``trainer.max_consecutive_skips`` in a row stop
training with :class:`~magicbokeh.errors.TrainingDivergedError`.

Optional latent VSD (``trainer.vsd``, off by default, not confirmed for MagicBokeh: REFERENCE §1.6): phases with
``vsd_weight > 0`` add ``λ·L_VSD(ẑ₀)`` to their loss, and after the generator's update the VSD fake score takes one
step of its own (:mod:`magicbokeh.training.vsd`). Everything VSD-specific sits in the ``_vsd_*`` helpers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from magicbokeh.errors import ConfigError, TrainingDivergedError
from magicbokeh.training.checkpointing import Checkpoints, TrainingProgress, WeightsFile
from magicbokeh.training.data_streams import BatchStream
from magicbokeh.training.defocus_source import DepthDefocus
from magicbokeh.training.losses import ReconstructionLoss
from magicbokeh.training.optim import guarded_update
from magicbokeh.training.phases import PhaseSchedule, phase_for_step
from magicbokeh.training.tracking import log_image
from magicbokeh.training.validation import Validator
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.progress import progress_bar

if TYPE_CHECKING:
    from magicbokeh.training.vsd import LatentVSD

logger = get_logger(__name__)

EXPORT_DIR = "model"  # the loadable model inside each checkpoint folder (scripts/evaluate.py ckpt=<checkpoint>/model)


@dataclass(frozen=True)
class PhaseSettings:
    """What one phase trains on and how fast: its data stream, learning rate, warm-up and loss weights."""

    data: str
    lr: float
    warmup_steps: int = 0
    l2_weight: float = 1.0
    lpips_weight: float = 2.0
    vsd_weight: float = 0.0  # λ of the optional latent VSD term (needs trainer.vsd.enabled); 0 = off


@dataclass(frozen=True)
class TrainerSettings:
    max_steps: int
    schedule: PhaseSchedule
    phases: Mapping[str, PhaseSettings]
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    log_every: int = 10
    val_every: int = 0
    checkpoint_every: int = 0
    keep_last: int = 3
    max_consecutive_skips: int = 20  # non-finite updates in a row before training stops with an error

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.grad_accum_steps < 1:
            raise ConfigError("trainer.max_steps and trainer.grad_accum_steps must be ≥ 1")
        if self.max_consecutive_skips < 1:
            raise ConfigError(f"trainer.max_consecutive_skips must be ≥ 1, got {self.max_consecutive_skips}")
        missing = [p for p in self.schedule.phases_used(self.max_steps) if p not in self.phases]
        if missing:
            raise ConfigError(f"the schedule uses phase(s) {missing} that have no entry under trainer.phases")


class Trainer:
    """Owns the step counter; everything it touches is built by :func:`magicbokeh.training.train.train`.

    ``model``, the phase ``optimizers`` (and the VSD fake score and optimizer) must already be prepared by
    ``accelerator``; the trainer registers its checkpoint state with it (:class:`Checkpoints`): the progress
    counters, each data stream's position, each phase's LR schedule and the VSD noise generator. Numbers go to
    ``accelerator.log`` (its trackers: metrics.jsonl, wandb).
    """

    def __init__(
        self,
        *,
        accelerator,
        model: torch.nn.Module,
        streams: Mapping[str, BatchStream],
        losses: Mapping[str, ReconstructionLoss],
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler],
        settings: TrainerSettings,
        checkpoint_dir: str | Path,
        validator: Validator | None = None,
        defocus_depth: DepthDefocus | None = None,
        vsd: LatentVSD | None = None,
    ) -> None:
        self.accelerator = accelerator
        self.model = model
        self.streams = dict(streams)
        self.losses = dict(losses)
        self.optimizers = dict(optimizers)
        self.schedulers = dict(schedulers)
        self.settings = settings
        self.validator = validator
        self.defocus_depth = defocus_depth
        self.vsd = vsd
        self.progress = TrainingProgress()
        unwrapped = accelerator.unwrap_model(model)
        # Trainable groups (+ the base weights of a randomly initialised model, which no file restores).
        weights = [WeightsFile("model", unwrapped, unwrapped.checkpoint_state_dict, unwrapped.load_checkpoint_weights)]
        states: dict[str, Any] = {"progress": self.progress}
        states.update({f"stream/{name}": stream for name, stream in sorted(self.streams.items())})
        states.update({f"lr/{name}": scheduler for name, scheduler in self.schedulers.items()})
        optimizer_names = list(self.optimizers)
        if vsd is not None:
            weights.append(WeightsFile("vsd", vsd.fake_module, vsd.checkpoint_tensors, vsd.load_checkpoint_tensors))
            states["vsd"] = vsd
            optimizer_names.append("vsd_fake_score")
        self.checkpoints = Checkpoints(
            accelerator,
            checkpoint_dir,
            settings.keep_last,
            weights=weights,
            states=states,
            optimizers=optimizer_names,
            # A loadable model beside the training state: `scripts/evaluate.py ckpt=<checkpoint>/model`.
            write_extra=lambda folder: unwrapped.save_pretrained(folder / EXPORT_DIR),
        )

    @property
    def step(self) -> int:
        """Optimizer steps taken (skipped non-finite updates included): the schedule's position."""
        return self.progress.step

    @step.setter
    def step(self, value: int) -> None:
        self.progress.step = int(value)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> None:
        """Train from ``self.step`` to ``max_steps``; log, validate and checkpoint on the configured periods."""
        settings = self.settings
        progress = progress_bar(
            total=settings.max_steps,
            initial=self.step,
            desc="train",
            disable=not self.accelerator.is_main_process,
            dynamic_ncols=True,
        )
        self.model.train()
        started, started_step = time.perf_counter(), self.step
        while self.step < settings.max_steps:
            phase = phase_for_step(self.step, settings.schedule)
            parts = self.train_step(phase)
            self.step += 1

            steps_per_s = (self.step - started_step) / max(time.perf_counter() - started, 1e-9)
            progress.update(1)
            progress.set_postfix(phase=phase, loss=f"{parts['loss']:.4f}", it_s=f"{steps_per_s:.2f}")
            if self._due(settings.log_every):
                self.accelerator.log({"phase": phase, **parts, "steps_per_s": steps_per_s}, step=self.step)
            if self._due(settings.val_every):
                self.validate()
            if self._due(settings.checkpoint_every):
                self.save_checkpoint()
        progress.close()

    def train_step(self, phase: str) -> dict[str, float]:
        """One optimizer update of ``phase``: accumulate micro-batches from its stream, then a guarded update
        (:func:`~magicbokeh.training.optim.guarded_update`: unscale this optimizer only, clip, skip if non-finite)."""
        phase_settings = self.settings.phases[phase]
        model = self.accelerator.unwrap_model(self.model)
        model.set_phase(phase)
        optimizer = self.optimizers[phase]
        accum = self.settings.grad_accum_steps
        totals: dict[str, float] = {}
        loss_sum = torch.zeros((), device=self.accelerator.device)
        vsd_latents: list[torch.Tensor] | None = [] if self._vsd_active(phase) else None
        for micro in range(accum):
            batch = next(self.streams[phase_settings.data])
            # Only the last micro-batch synchronises gradients across ranks.
            sync = contextlib.nullcontext() if micro == accum - 1 else self.accelerator.no_sync(self.model)
            with sync:
                loss, parts = self._loss(phase, batch, vsd_latents)
                self.accelerator.backward(loss / accum)
            loss_sum += loss.detach().float() / accum
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + value.detach().float().item() / accum
        lr = optimizer.param_groups[0]["lr"]  # the rate this update uses
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        update = guarded_update(optimizer, parameters, loss_sum, self.settings.max_grad_norm, self.accelerator)
        totals.update({"loss": update.loss, "grad_norm": update.grad_norm, f"lr/{phase}": lr})
        if update.applied:
            self.schedulers[phase].step()
            self.progress.consecutive_skips = 0
            if vsd_latents is not None:
                totals["vsd_fake_diffusion"] = self._vsd_update_fake_score(vsd_latents)
        else:
            self._skip(phase, update.loss, update.grad_norm)
        totals["skipped_steps"] = self.progress.skipped_steps
        return totals

    def _skip(self, phase: str, loss: float, grad_norm: float) -> None:
        """Count a skipped (non-finite) update; too many in a row mean training has diverged."""
        self.progress.skipped_steps += 1
        self.progress.consecutive_skips += 1
        logger.warning(
            "step %d (%s): non-finite loss %s or gradient norm %s, update skipped (%d in a row)",
            self.step + 1, phase, loss, grad_norm, self.progress.consecutive_skips,
        )  # fmt: skip
        if self.progress.consecutive_skips >= self.settings.max_consecutive_skips:
            raise TrainingDivergedError(
                f"{self.progress.consecutive_skips} consecutive updates had a non-finite loss or gradient norm "
                f"(up to step {self.step + 1}, phase {phase}); lower trainer.phases.{phase}.lr, train in bf16 "
                "rather than fp16, or resume from an earlier checkpoint (trainer.max_consecutive_skips sets the limit)"
            )

    def _loss(
        self, phase: str, batch: Mapping[str, Any], vsd_latents: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The phase's loss on one micro-batch; with ``vsd_latents`` (a list) also λ·L_VSD, collecting ẑ₀ there."""
        device = self.accelerator.device
        lq, target, defocus = (batch[key].to(device) for key in ("lq", "target", "defocus"))
        if self.defocus_depth is not None:
            defocus = self.defocus_depth.condition(batch, device)
        if vsd_latents is None:
            with self.accelerator.autocast():
                images = self.model(lq, defocus)
            return self.losses[phase](images, target)
        with self.accelerator.autocast():
            images, latents = self.model(lq, defocus, return_latents=True)
        loss, parts = self.losses[phase](images, target)
        vsd_latents.append(latents.detach())
        return self._vsd_add_loss(phase, loss, parts, latents)

    # ------------------------------------------------------------------ optional latent VSD
    def _vsd_active(self, phase: str) -> bool:
        return self.vsd is not None and self.settings.phases[phase].vsd_weight > 0

    def _vsd_add_loss(
        self, phase: str, loss: torch.Tensor, parts: dict[str, torch.Tensor], latents: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """loss + λ·L_VSD(ẑ₀); the gradient reaches the generator through ẑ₀ only (the scores get none)."""
        vsd_loss, vsd_parts = self.vsd.loss(latents)
        return loss + self.settings.phases[phase].vsd_weight * vsd_loss, {**parts, **vsd_parts}

    def _vsd_update_fake_score(self, latents: list[torch.Tensor]) -> float:
        """One fake-score step on this update's (detached) generator latents, after the generator's step."""
        return self.vsd.update_fake_score(torch.cat(latents))

    def _due(self, every: int) -> bool:
        return every > 0 and (self.step % every == 0 or self.step == self.settings.max_steps)

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Score the held-out sets on the main process, write the grids, log ``val/...``."""
        metrics: dict[str, float] = {}
        if self.validator is not None and self.accelerator.is_main_process:
            metrics = self.validator.evaluate_model(
                self.accelerator.unwrap_model(self.model), self.accelerator.device, step=self.step
            )
            self.accelerator.log({f"val/{key}": value for key, value in metrics.items()}, step=self.step)
            for task in self.validator.datasets:
                log_image(self.accelerator, f"val/{task}", self.validator.grid_path(task, self.step), self.step)
            logger.info(
                "step %d validation: %s", self.step, ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()))
            )
        self.accelerator.wait_for_everyone()
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Every rank reaches this (accelerate's save_state); returns the checkpoint folder."""
        return self.checkpoints.save(self.step)

    def resume(self, path: str | Path) -> None:
        """Restore weights, optimizers, schedulers, counters, data positions and every rank's RNG states."""
        self.checkpoints.load(path)
        logger.info("resumed from %s at step %d", path, self.step)
