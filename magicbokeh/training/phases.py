"""The alternating training schedule (REFERENCE §1.4) as one pure function of the step.

    step < pretrain_steps                 → pretrain_phase ("sr_pretrain": VAE-encoder LoRA + SR LoRA + conv_in)
    otherwise, u = (step − pretrain_steps) // period, walk the cycle with its ratio:
        cycle = (bokeh, sr), ratio = (1, 1), period = 1  → bokeh, sr, bokeh, sr, …      (the paper's alternation)
        cycle = (bokeh, sr), ratio = (2, 1), period = 5  → 10 bokeh steps, 5 sr steps, …

Keeping the schedule a pure function (no state, no module hook) means it is table-tested, a resumed run recomputes
the same phase from the step alone, and ablations are nothing but different tables: ``cycle=(joint,)`` (no
alternation), ``cycle=(sr_pretrain,)`` (SR only), ``pretrain_steps=0, cycle=(bokeh,)`` (bokeh only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from magicbokeh.errors import ConfigError
from magicbokeh.models.model import PHASES  # the model's trainable groups: a phase trains exactly one of them


@dataclass(frozen=True)
class PhaseSchedule:
    """``pretrain_steps`` of ``pretrain_phase``, then ``cycle`` repeated; phase i lasts ``ratio[i] · period`` steps."""

    pretrain_steps: int = 0
    cycle: tuple[str, ...] = ("bokeh", "sr")
    ratio: tuple[int, ...] = (1, 1)
    period: int = 1
    pretrain_phase: str = "sr_pretrain"

    def __post_init__(self) -> None:
        object.__setattr__(self, "cycle", tuple(self.cycle))
        object.__setattr__(self, "ratio", tuple(int(r) for r in self.ratio))
        unknown = [p for p in (*self.cycle, self.pretrain_phase) if p not in PHASES]
        if unknown:
            raise ConfigError(f"unknown training phase(s) {unknown}; choose from {list(PHASES)}")
        if not self.cycle:
            raise ConfigError("trainer.schedule.cycle must name at least one phase")
        if len(self.ratio) != len(self.cycle) or any(r < 1 for r in self.ratio):
            raise ConfigError(
                f"trainer.schedule.ratio {list(self.ratio)} must give one positive integer per cycle phase "
                f"{list(self.cycle)}"
            )
        if self.period < 1 or self.pretrain_steps < 0:
            raise ConfigError(
                f"trainer.schedule needs period ≥ 1 and pretrain_steps ≥ 0, got {self.period}, {self.pretrain_steps}"
            )

    @classmethod
    def from_config(
        cls,
        pretrain_steps: int = 0,
        cycle: Sequence[str] = ("bokeh", "sr"),
        ratio: Sequence[int] | None = None,
        period: int = 1,
        pretrain_phase: str = "sr_pretrain",
    ) -> PhaseSchedule:
        """Build from config values; ``ratio`` defaults to one block per cycle phase."""
        cycle = tuple(cycle)
        return cls(
            int(pretrain_steps), cycle, tuple(ratio) if ratio else (1,) * len(cycle), int(period), pretrain_phase
        )

    def phases_used(self, max_steps: int) -> tuple[str, ...]:
        """The distinct phases a run of ``max_steps`` steps visits, in first-visit order (which optimizers to build)."""
        return tuple(dict.fromkeys(phase_for_step(step, self) for step in range(max_steps)))


def phase_for_step(step: int, schedule: PhaseSchedule) -> str:
    """The phase that optimizer step ``step`` (0-based) belongs to."""
    if step < 0:
        raise ConfigError(f"step must be ≥ 0, got {step}")
    if step < schedule.pretrain_steps:
        return schedule.pretrain_phase
    unit = ((step - schedule.pretrain_steps) // schedule.period) % sum(schedule.ratio)
    for phase, share in zip(schedule.cycle, schedule.ratio):
        if unit < share:
            return phase
        unit -= share
    raise AssertionError("unreachable: unit < sum(ratio)")
