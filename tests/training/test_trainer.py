"""Trainer on fakes: each phase updates only its group, schedule followed, exact loss reproduction after a kill."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from accelerate import Accelerator

from magicbokeh.training.data_streams import BatchStream
from magicbokeh.training.losses import ReconstructionLoss
from magicbokeh.training.optim import build_lr_scheduler, build_optimizer
from magicbokeh.training.phases import PhaseSchedule
from magicbokeh.training.tracking import JsonlTracker, read_metrics
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
    accelerator=None,
    resume_step=None,
    optimizer_factory=None,
    max_consecutive_skips=20,
    start_trackers=True,
    lpips_model=None,
) -> Trainer:
    """A Trainer over fakes (or over ``model``, e.g. the real tiny network, with ``size``-pixel samples), prepared by
    ``accelerator`` (default: a float32 CPU one) and logging to ``run_dir/metrics.jsonl``; loss weights come from
    ``phases``; ``vsd`` (a LatentVSD) is attached to the accelerator. ``optimizer_factory(params, lr)`` replaces
    AdamW (the precision tests use plain SGD, whose update is proportional to the gradient); ``lpips_model`` serves
    phases with an LPIPS weight."""
    torch.manual_seed(0)
    accelerator = accelerator or Accelerator(cpu=True, log_with=[JsonlTracker(run_dir, resume_step)])
    model = FakeMagicBokeh() if model is None else model
    settings = TrainerSettings(
        max_steps=max_steps,
        schedule=PhaseSchedule(pretrain_steps=2),
        phases=phases,
        grad_accum_steps=grad_accum_steps,
        log_every=1,
        checkpoint_every=checkpoint_every,
        keep_last=2,
        max_consecutive_skips=max_consecutive_skips,
    )
    optimizers, schedulers = {}, {}
    for phase in settings.schedule.phases_used(max_steps):
        if optimizer_factory is None:
            optimizers[phase] = build_optimizer(
                model.trainable_parameters(phase), lr=phases[phase].lr, **(optimizer_kwargs or {})
            )
        else:
            optimizers[phase] = optimizer_factory(model.trainable_parameters(phase), phases[phase].lr)
        schedulers[phase] = build_lr_scheduler(optimizers[phase], phases[phase].warmup_steps, "cosine", max_steps)
    for phase in optimizers:  # every scheduled group trainable, as train() leaves them before prepare()
        for param in model.trainable_parameters(phase):
            param.requires_grad_(True)
    prepared = accelerator.prepare(model, *optimizers.values())
    optimizers = dict(zip(optimizers, prepared[1:]))
    if vsd is not None:
        vsd.attach(accelerator)
    streams = {
        task: BatchStream(FakePairs(task, length=5, size=size), batch_size=2, seed=3) for task in ("sr", "bokeh")
    }
    trainer = Trainer(
        accelerator=accelerator,
        model=prepared[0],
        streams=streams,
        losses={
            phase: ReconstructionLoss(phases[phase].l2_weight, phases[phase].lpips_weight, lpips_model)
            for phase in optimizers
        },
        optimizers=optimizers,
        schedulers=schedulers,
        settings=settings,
        checkpoint_dir=run_dir / "checkpoints",
        vsd=vsd,
    )
    if start_trackers:
        accelerator.init_trackers("test")
    return trainer


def _group_snapshot(model: FakeMagicBokeh) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_each_phase_updates_only_its_group(tmp_path, grad_accum_steps):
    # No warm-up: diffusers' warm-up runs a phase's first step at lr 0, which moves nothing.
    no_warmup = {name: dataclasses.replace(phase, warmup_steps=0) for name, phase in PHASES.items()}
    trainer = _trainer(tmp_path, grad_accum_steps=grad_accum_steps, phases=no_warmup)
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
    reference.accelerator.end_training()
    expected = _losses(tmp_path / "reference")

    killed = _trainer(tmp_path / "run", max_steps=8, checkpoint_every=3)
    killed.accelerator.unwrap_model(killed.model).fail_at_call = 5  # dies in step 5, after the step-3 checkpoint
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    killed.accelerator.end_training()
    latest = killed.checkpoints.latest()
    assert latest.name == "step_000003"
    assert sorted(_losses(tmp_path / "run")) == [1, 2, 3, 4]  # step 4 was logged after the checkpoint

    resumed = _trainer(tmp_path / "run", max_steps=8, checkpoint_every=3, resume_step=3, start_trackers=False)
    torch.manual_seed(1234)  # the global RNG (dropout) must come back from the checkpoint, not from here
    resumed.resume(latest)
    resumed.accelerator.init_trackers("test")  # as train() does: the trackers start after the resume
    assert resumed.step == 3
    resumed.fit()
    resumed.accelerator.end_training()
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]  # step 4 of the killed run dropped, not repeated
    got = _losses(tmp_path / "run")
    assert all(got[step] == expected[step] for step in got), (got, expected)
    assert torch.equal(
        resumed.model.state_dict()["bokeh_lora.weight"], reference.model.state_dict()["bokeh_lora.weight"]
    )
