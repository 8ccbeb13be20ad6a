"""phase_for_step: the alternating schedule as a table."""

from __future__ import annotations

import pytest

from magicbokeh.errors import ConfigError
from magicbokeh.training.phases import PhaseSchedule, phase_for_step

P, B, S, J = "sr_pretrain", "bokeh", "sr", "joint"


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # The paper's default: SR pre-training, then bokeh and SR alternate every step.
        (PhaseSchedule(pretrain_steps=3), [P, P, P, B, S, B, S, B, S]),
        # Period 2: blocks of two steps each.
        (PhaseSchedule(pretrain_steps=1, period=2), [P, B, B, S, S, B, B, S, S]),
        # Ratio 2:1 bokeh:SR, every step.
        (PhaseSchedule(pretrain_steps=0, ratio=(2, 1)), [B, B, S, B, B, S, B, B, S]),
        # Ratio 1:3 with period 2.
        (PhaseSchedule(pretrain_steps=0, ratio=(1, 3), period=2), [B, B, S, S, S, S, S, S, B]),
        # Ablations: no alternation (joint), SR only, bokeh only.
        (PhaseSchedule(pretrain_steps=2, cycle=(J,), ratio=(1,)), [P, P, J, J, J, J, J, J, J]),
        (PhaseSchedule(pretrain_steps=0, cycle=(P,), ratio=(1,)), [P] * 9),
        (PhaseSchedule(pretrain_steps=0, cycle=(B,), ratio=(1,)), [B] * 9),
    ],
)
def test_phase_table(schedule, expected):
    assert [phase_for_step(step, schedule) for step in range(len(expected))] == expected


def test_phases_used_lists_only_visited_phases():
    assert PhaseSchedule(pretrain_steps=5).phases_used(3) == (P,)
    assert PhaseSchedule(pretrain_steps=2).phases_used(4) == (P, B, S)
    assert PhaseSchedule(pretrain_steps=0, ratio=(4, 1)).phases_used(3) == (B,)


def test_from_config_defaults_ratio():
    assert PhaseSchedule.from_config(pretrain_steps=1, cycle=[B, S, J]).ratio == (1, 1, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cycle": ("bokeh", "nap")},
        {"cycle": ()},
        {"ratio": (1,)},
        {"ratio": (1, 0)},
        {"period": 0},
        {"pretrain_steps": -1},
    ],
)
def test_bad_schedules_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        PhaseSchedule(**kwargs)


def test_negative_step_is_rejected():
    with pytest.raises(ConfigError):
        phase_for_step(-1, PhaseSchedule())
