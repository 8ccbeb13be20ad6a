"""One AdamW + learning-rate schedule per training phase, and the one guarded optimizer update every loop uses.

Each phase owns its optimizer (REFERENCE §1.4: 5e-5 for SR pre-training and bokeh, 5e-6 for the SR phase) so
that Adam's moment estimates of a parameter group are only ever updated by the phase that trains it, and so that
the schedule of one phase (warm-up, decay) advances only on that phase's own steps. Schedules are diffusers'
(``diffusers.optimization.get_scheduler``): a linear warm-up ``n / warmup_steps`` over the phase's first steps
(its first step runs at lr 0), then constant or a cosine decay to 0 over the phase's remaining steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from magicbokeh.errors import ConfigError

LR_SCHEDULES = ("constant", "cosine", "linear", "cosine_with_restarts", "polynomial")


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 1e-2,
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over ``parameters`` (OSEDiff's settings by default)."""
    parameters = list(parameters)
    if not parameters:
        raise ConfigError("a training phase has no trainable parameters; check the model's phase groups")
    if lr <= 0:
        raise ConfigError(f"learning rate must be > 0, got {lr}")
    return torch.optim.AdamW(parameters, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, schedule: str = "constant", total_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """diffusers' ``get_scheduler(schedule)`` with ``warmup_steps`` of linear warm-up; ``total_steps`` counts this
    phase's (or this loop's) steps only. ``constant`` keeps the warm-up (diffusers' ``constant_with_warmup``).

    Its ``state_dict`` is plain data (diffusers' rate functions are closures, which ``LambdaLR`` does not store),
    so checkpoints of it load with ``torch.load(weights_only=True)``."""
    from diffusers.optimization import get_scheduler

    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr schedule must be one of {LR_SCHEDULES}, got '{schedule}'")
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be ≥ 0, got {warmup_steps}")
    name = "constant_with_warmup" if schedule == "constant" else schedule
    return get_scheduler(name, optimizer, num_warmup_steps=int(warmup_steps), num_training_steps=int(total_steps))


@dataclass(frozen=True)
class UpdateOutcome:
    """What :func:`guarded_update` did: the loss averaged over ranks, the total gradient norm (before clipping, after
    unscaling) and whether the optimizer stepped."""

    loss: float
    grad_norm: float
    applied: bool


def _unwrapped_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` wrapper (GradScaler keys its state on it)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def guarded_update(
    optimizer: torch.optim.Optimizer,
    parameters: Sequence[torch.nn.Parameter],
    loss: torch.Tensor,
    max_grad_norm: float | None,
    accelerator=None,
) -> UpdateOutcome:
    """Unscale, clip, check, then step (or skip) ``optimizer`` after the backward passes of one update.

    * fp16 loss scaling: only ``optimizer``'s gradients are unscaled, once (``GradScaler.unscale_``). accelerate's
      ``clip_grad_norm_`` would unscale *every* prepared optimizer, and a parameter shared by two of them (the SR
      LoRA is in the ``sr_pretrain`` and the ``sr`` optimizer) would be divided by the scale twice.
    * Clipping and the total norm cover ``parameters`` (this optimizer's own).
    * Nothing moves unless the loss and the gradient norm are finite. Under DDP both are identical on every rank
      (gradients are all-reduced before this is called, the loss is averaged here), so all ranks take the same
      decision. A skipped update leaves weights and optimizer state untouched; under fp16 the scaler still
      ``update()``s, so the inf gradients that ``unscale_`` recorded lower the loss scale.

    ``accelerator`` is None for an optimizer used outside accelerate (a single process in float32).
    """
    scaler = accelerator.scaler if accelerator is not None else None
    if scaler is not None:
        scaler.unscale_(_unwrapped_optimizer(optimizer))
    parameters = [param for param in parameters if param.grad is not None]
    if max_grad_norm:
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    else:
        grad_norm = torch.nn.utils.get_total_norm([param.grad for param in parameters])
    loss = loss.detach().float().reshape(1)
    if accelerator is not None and accelerator.num_processes > 1:
        loss = accelerator.reduce(loss.to(accelerator.device), reduction="mean")
    loss_value, norm_value = float(loss), float(grad_norm)
    applied = math.isfinite(loss_value) and math.isfinite(norm_value)
    if applied:
        optimizer.step()  # accelerate's wrapper: GradScaler.step + update under fp16 (it sees the unscale above)
    elif scaler is not None:
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return UpdateOutcome(loss=loss_value, grad_norm=norm_value, applied=applied)
