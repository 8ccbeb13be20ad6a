"""One AdamW + learning-rate schedule per training phase.

Each phase owns its optimizer (REFERENCE §1.4: 5e-5 for SR pre-training and bokeh, 5e-6 for the SR phase) so
that Adam's moment estimates of a parameter group are only ever updated by the phase that trains it, and so that
the schedule of one phase (warm-up, decay) advances only on that phase's own steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from magicbokeh.errors import ConfigError

LR_SCHEDULES = ("constant", "cosine")


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


class WarmupThenDecay:
    """LR multiplier for the phase's own step n: linear warm-up over ``warmup_steps``, then constant or cosine.

        warm-up:  (n + 1) / warmup_steps                     for n < warmup_steps
        cosine:   ½ · (1 + cos(π · (n − warmup) / (total − warmup)))   down to ``min_ratio``

    A class (not a lambda) so ``LambdaLR.state_dict`` stores its settings and checkpoints stay plain data.
    """

    def __init__(self, warmup_steps: int, schedule: str = "constant", total_steps: int = 0, min_ratio: float = 0.0):
        if schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr schedule must be one of {LR_SCHEDULES}, got '{schedule}'")
        if warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be ≥ 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.total_steps = int(total_steps)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant" or self.total_steps <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, schedule: str = "constant", total_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :class:`WarmupThenDecay`; ``total_steps`` counts this phase's steps only."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupThenDecay(warmup_steps, schedule, total_steps))
