"""Trainer on fakes: each phase updates only its group, schedule followed, exact loss reproduction after a kill."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from magicbokeh.training.checkpointing import CheckpointManager
from magicbokeh.training.data_streams import BatchStream
from magicbokeh.training.losses import ReconstructionLoss
from magicbokeh.training.optim import build_lr_scheduler, build_optimizer
from magicbokeh.training.phases import PhaseSchedule
from magicbokeh.training.tracking import Tracker, read_metrics
from magicbokeh.training.trainer import PhaseSettings, Trainer, TrainerSettings
from tests.training.fakes import GROUPS, FakeMagicBokeh, FakePairs

PHASES = {
    "sr_pretrain": PhaseSettings(data="sr", lr=1e-2, warmup_steps=2, lpips_weight=0.0),
    "bokeh": PhaseSettings(data="bokeh", lr=1e-2, warmup_steps=2, lpips_weight=0.0),
    "sr": PhaseSettings(data="sr", lr=1e-3, lpips_weight=0.0),
}


def _trainer(
    run_dir,
    max_steps=8,
    checkpoint_every=0,
    grad_accum_steps=1,
    model=None,
    size=8,
    phases=PHASES,
    optimizer_kwargs=None,
    vsd=None,
) -> Trainer:
    """A Trainer over fakes (or over ``model``, e.g. the real tiny network, with ``size``-pixel samples); loss
    weights come from ``phases``; ``vsd`` (a LatentVSD) is attached to the trainer's accelerator."""
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = FakeMagicBokeh() if model is None else model
    settings = TrainerSettings(
        max_steps=max_steps,
        schedule=PhaseSchedule(pretrain_steps=2),
        phases=phases,
        grad_accum_steps=grad_accum_steps,
        log_every=1,
        checkpoint_every=checkpoint_every,
    )
    optimizers, schedulers = {}, {}
    for phase in settings.schedule.phases_used(max_steps):
        optimizers[phase] = build_optimizer(
            model.trainable_parameters(phase), lr=phases[phase].lr, **(optimizer_kwargs or {})
        )
        schedulers[phase] = build_lr_scheduler(optimizers[phase], phases[phase].warmup_steps, "cosine", max_steps)
    streams = {
        task: BatchStream(FakePairs(task, length=5, size=size), batch_size=2, seed=3) for task in ("sr", "bokeh")
    }
    return Trainer(
        accelerator=accelerator,
        model=model,
        streams=streams,
        losses={phase: ReconstructionLoss(phases[phase].l2_weight, phases[phase].lpips_weight) for phase in optimizers},
        optimizers=optimizers,
        schedulers=schedulers,
        settings=settings,
        tracker=Tracker(run_dir, {"name": "none"}, {}, is_main_process=True),
        checkpoints=CheckpointManager(run_dir / "checkpoints", keep_last=2),
        vsd=None if vsd is None else vsd.attach(accelerator),
    )


def _group_snapshot(model: FakeMagicBokeh) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_each_phase_updates_only_its_group(tmp_path, grad_accum_steps):
    trainer = _trainer(tmp_path, grad_accum_steps=grad_accum_steps)
    model = trainer.model
    for step, phase in enumerate(["sr_pretrain", "sr_pretrain", "bokeh", "sr", "bokeh"]):
        before = _group_snapshot(model)
        trainer.train_step(phase)
        trainer.step += 1
        changed = {name.split(".")[0] for name, value in _group_snapshot(model).items()
                   if not torch.equal(value, before[name])}  # fmt: skip
        assert changed == set(GROUPS[phase]), (step, phase, changed)
    # The frozen base never moves; each stream advanced by its own batches only (3 SR steps, 2 bokeh).
    assert trainer.streams["sr"].position == 3 * 2 * grad_accum_steps
    assert trainer.streams["bokeh"].position == 2 * 2 * grad_accum_steps


def test_fit_follows_the_schedule_and_logs(tmp_path):
    trainer = _trainer(tmp_path, max_steps=6)
    trainer.fit()
    records = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["phase"] for r in records] == ["sr_pretrain", "sr_pretrain", "bokeh", "sr", "bokeh", "sr"]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    # Warm-up of the bokeh optimizer counts bokeh steps only: half the lr on its first step, full on its second.
    bokeh_lrs = [r["lr/bokeh"] for r in records if r["phase"] == "bokeh"]
    assert bokeh_lrs[0] < bokeh_lrs[1]


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def test_killed_and_resumed_run_reproduces_losses_exactly(tmp_path):
    reference = _trainer(tmp_path / "reference", max_steps=8)
    reference.fit()
    expected = _losses(tmp_path / "reference")

    killed = _trainer(tmp_path / "killed", max_steps=8, checkpoint_every=3)
    killed.model.fail_at_call = 5  # dies in the middle of step 5, after the step-3 checkpoint
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    latest = killed.checkpoints.latest()
    assert latest.name == "step_000003"
    killed.tracker.close()

    resumed = _trainer(tmp_path / "resumed", max_steps=8, checkpoint_every=3)
    resumed.checkpoints = killed.checkpoints
    resumed.resume(latest)
    assert resumed.step == 3
    resumed.fit()
    got = _losses(tmp_path / "resumed")
    assert sorted(got) == [4, 5, 6, 7, 8]
    assert all(got[step] == expected[step] for step in got), (got, expected)
    assert torch.equal(
        resumed.model.state_dict()["bokeh_lora.weight"], reference.model.state_dict()["bokeh_lora.weight"]
    )
