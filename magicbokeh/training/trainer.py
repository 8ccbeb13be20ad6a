"""The training loop: alternating bokeh / SR phases, one optimizer per phase (REFERENCE §1.4, DESIGN §1).

Read :meth:`Trainer.fit` first; everything else is a named helper around it. One *step* is one optimizer update
of the current phase: ``grad_accum_steps`` micro-batches, all drawn from that phase's data stream (accumulating
across a phase switch would mix the two tasks' gradients in one update).

Multi-GPU: a phase trains only its own parameter group, so under DDP the other groups get no gradient on some
steps. We wrap the whole model once, with every trainable group marked ``requires_grad`` so DDP registers them,
and let ``find_unused_parameters=True`` discover per step which ones the phase left out (their gradients stay
``None`` and their phase's optimizer is not stepped). The alternative, one DDP wrapper per phase, would hold one
set of gradient buckets per phase and complicate checkpointing; the graph walk costs little next to a UNet pass.

Optional latent VSD (``trainer.vsd``, off by default, not confirmed for MagicBokeh: REFERENCE §1.6): phases with
``vsd_weight > 0`` add ``λ·L_VSD(ẑ₀)`` to their loss, and after the generator's update the VSD fake score takes one
step of its own (:mod:`magicbokeh.training.vsd`). Everything VSD-specific sits in the ``_vsd_*`` helpers.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from magicbokeh.errors import ConfigError
from magicbokeh.training.checkpointing import (
    CheckpointManager,
    capture_rng_state,
    generator_state_to_text,
    restore_generator_state,
    restore_rng_state,
)
from magicbokeh.training.data_streams import BatchStream
from magicbokeh.training.defocus_source import DepthDefocus
from magicbokeh.training.losses import ReconstructionLoss
from magicbokeh.training.phases import PhaseSchedule, phase_for_step
from magicbokeh.training.tracking import Tracker
from magicbokeh.training.validation import Validator
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.progress import progress_bar

if TYPE_CHECKING:
    from magicbokeh.training.vsd import LatentVSD

logger = get_logger(__name__)

VSD_OPTIMIZER = "vsd_fake_score"  # its entry in optimizers.pt (phase names never take this name)
VSD_TENSORS = "vsd"  # vsd.safetensors in the checkpoint folder


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

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.grad_accum_steps < 1:
            raise ConfigError("trainer.max_steps and trainer.grad_accum_steps must be ≥ 1")
        missing = [p for p in self.schedule.phases_used(self.max_steps) if p not in self.phases]
        if missing:
            raise ConfigError(f"the schedule uses phase(s) {missing} that have no entry under trainer.phases")


class Trainer:
    """Owns the step counter; everything it touches is built by :func:`magicbokeh.training.train.train`."""

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
        tracker: Tracker,
        checkpoints: CheckpointManager,
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
        self.tracker = tracker
        self.checkpoints = checkpoints
        self.validator = validator
        self.defocus_depth = defocus_depth
        self.vsd = vsd
        self.step = 0

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
                self.tracker.log({"phase": phase, **parts, "steps_per_s": steps_per_s}, self.step)
            if self._due(settings.val_every):
                self.validate()
            if self._due(settings.checkpoint_every):
                self.save_checkpoint(phase)
        progress.close()

    def train_step(self, phase: str) -> dict[str, float]:
        """One optimizer update of ``phase``: accumulate micro-batches from its stream, clip, step its optimizer."""
        phase_settings = self.settings.phases[phase]
        model = self.accelerator.unwrap_model(self.model)
        model.set_phase(phase)
        optimizer = self.optimizers[phase]
        accum = self.settings.grad_accum_steps
        totals: dict[str, float] = {}
        vsd_latents: list[torch.Tensor] | None = [] if self._vsd_active(phase) else None
        for micro in range(accum):
            batch = next(self.streams[phase_settings.data])
            # Only the last micro-batch synchronises gradients across ranks.
            sync = contextlib.nullcontext() if micro == accum - 1 else self.accelerator.no_sync(self.model)
            with sync:
                loss, parts = self._loss(phase, batch, vsd_latents)
                self.accelerator.backward(loss / accum)
            for name, value in {"loss": loss, **parts}.items():
                totals[name] = totals.get(name, 0.0) + value.detach().float().item() / accum
        if self.settings.max_grad_norm:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            grad_norm = self.accelerator.clip_grad_norm_(parameters, self.settings.max_grad_norm)
            totals["grad_norm"] = float(grad_norm)
        totals[f"lr/{phase}"] = optimizer.param_groups[0]["lr"]  # the rate this update used
        optimizer.step()
        self.schedulers[phase].step()
        optimizer.zero_grad(set_to_none=True)
        if vsd_latents is not None:
            totals["vsd_fake_diffusion"] = self._vsd_update_fake_score(vsd_latents)
        if not math.isfinite(totals["loss"]):
            raise FloatingPointError(f"non-finite loss at step {self.step} (phase {phase}); lower the learning rate")
        return totals

    def _loss(
        self, phase: str, batch: Mapping[str, Any], vsd_latents: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The phase's loss on one micro-batch; with ``vsd_latents`` (a list) also λ·L_VSD, collecting ẑ₀ there."""
        device = self.accelerator.device
        lq, target, defocus = (batch[key].to(device) for key in ("lq", "target", "defocus"))
        if self.defocus_depth is not None:
            defocus = self.defocus_depth(lq, defocus, batch["K"].to(device))
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

    def _vsd_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(extra optimizer states, extra tensor sets, extra trainer state) of the VSD regulariser; empty without."""
        if self.vsd is None:
            return {}, {}, {}
        return (
            {VSD_OPTIMIZER: self.vsd.optimizer.state_dict()},
            {VSD_TENSORS: self.vsd.checkpoint_tensors()},
            {"vsd": {"generator": generator_state_to_text(self.vsd.generator)}},
        )

    def _vsd_resume(self, path: Path, optimizer_states: Mapping[str, Any], trainer_state: Mapping[str, Any]) -> None:
        if self.vsd is None:
            return
        tensors = self.checkpoints.load_extra_tensors(path, VSD_TENSORS)
        if tensors is None:
            logger.warning("%s holds no VSD state: the fake score starts again from the real score", path)
            return
        self.vsd.load_checkpoint_tensors(tensors)
        self.vsd.optimizer.load_state_dict(optimizer_states[VSD_OPTIMIZER])
        restore_generator_state(self.vsd.generator, trainer_state["vsd"]["generator"])

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
            self.tracker.log({f"val/{key}": value for key, value in metrics.items()}, self.step)
            for task in self.validator.datasets:
                self.tracker.log_image(f"val/{task}", self.validator.grid_path(task, self.step), self.step)
            logger.info(
                "step %d validation: %s", self.step, ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()))
            )
        self.accelerator.wait_for_everyone()
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, phase: str) -> Path | None:
        """Every rank reaches this; the main process writes, the others wait."""
        path = None
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            vsd_optimizers, vsd_tensors, vsd_state = self._vsd_checkpoint()
            state = {
                "phase": phase,
                "data_positions": {name: stream.position for name, stream in self.streams.items()},
                # The main process's RNG; exact reproduction after a resume is guaranteed for one process.
                "rng": capture_rng_state(),
                **vsd_state,
            }
            path = self.checkpoints.save(
                self.step,
                # Trainable groups (+ the base weights of a randomly initialised model, which no file restores).
                model.checkpoint_state_dict(),
                {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()} | vsd_optimizers,
                {name: scheduler.state_dict() for name, scheduler in self.schedulers.items()},
                state,
                # A loadable model beside the training state: `scripts/evaluate.py ckpt=<checkpoint>/model`.
                write_extra=lambda folder: model.save_pretrained(folder / "model"),
                extra_tensors=vsd_tensors,
            )
        self.accelerator.wait_for_everyone()
        return path

    def resume(self, path: str | Path) -> None:
        """Restore weights, optimizers, schedulers, step, data positions and RNG states from a checkpoint folder."""
        model_state, optimizer_states, scheduler_states, trainer_state = self.checkpoints.load(path)
        self.accelerator.unwrap_model(self.model).load_checkpoint_weights(model_state)
        for name, optimizer in self.optimizers.items():
            if name in optimizer_states:
                optimizer.load_state_dict(optimizer_states[name])
        for name, scheduler in self.schedulers.items():
            if name in scheduler_states:
                scheduler.load_state_dict(scheduler_states[name])
        for name, position in trainer_state["data_positions"].items():
            if name in self.streams:
                self.streams[name].position = int(position)
        restore_rng_state(trainer_state["rng"])
        self._vsd_resume(Path(path), optimizer_states, trainer_state)
        self.step = int(trainer_state["step"])
        logger.info("resumed from %s at step %d (phase %s)", path, self.step, trainer_state["phase"])
