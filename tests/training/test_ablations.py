"""Each ablation does what its name says, not only composes: no-FAMA disables the region mask, joint trains every
group with one optimizer on mixed batches, no-DA-depth conditions training on a plain depth model run on the LQ."""

from __future__ import annotations

import functools

import pytest
import torch
from hydra.utils import instantiate

from magicbokeh.models.attention import FocusAwareAttnProcessor, FocusRegions
from magicbokeh.models.model import parameter_group
from magicbokeh.training.trainer import Trainer
from magicbokeh.utils.config import compose_config
from tests.training.test_train_smoke import _toy_overrides

PAPER_ON_CPU = ["trainer.mixed_precision=no", "trainer.val_every=0", "trainer.checkpoint_every=0"]


def _spy(monkeypatch, owner, name: str, record):
    """Wrap ``owner.name`` so every call is passed to ``record(self, *args, **kwargs)`` first."""
    original = getattr(owner, name)

    @functools.wraps(original)  # keeps the signature: diffusers passes a processor only the kwargs it declares
    def spy(self, *args, **kwargs):
        record(self, *args, **kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, spy)


def _with_random_bokeh_lora(model):
    """Give the bokeh LoRA (zero-initialised B) weights, so the FAMA branch changes the output."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if parameter_group(name) == "bokeh_lora":
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.mark.slow
def test_no_fama_really_drops_the_focus_mask(tmp_path, monkeypatch):
    def build(experiment: str):
        torch.manual_seed(0)
        cfg = compose_config("train", [f"experiment={experiment}", *_toy_overrides(tmp_path, experiment)])
        return _with_random_bokeh_lora(instantiate(cfg.model))

    ablation, paper = build("ablation_no_fama"), build("paper")
    weights, same = ablation.state_dict(), paper.state_dict()
    assert weights.keys() == same.keys() and all(torch.equal(v, same[k]) for k, v in weights.items())  # same network
    seen = []
    _spy(monkeypatch, FocusAwareAttnProcessor, "__call__", lambda self, *a, focus=None, **k: seen.append(focus))
    lq = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    defocus = torch.zeros(2, 1, 16, 16)
    defocus[..., 8:] = 1.0  # half in focus, half not: two regions
    with torch.no_grad():
        masked = paper(lq, defocus)
        assert seen and all(isinstance(focus, FocusRegions) for focus in seen)
        seen.clear()
        unmasked = ablation(lq, defocus)
        assert seen and all(focus is None for focus in seen)  # the FAMA processors get no regions at all
        # = the full model with one region covering everything (an all-in-focus mask, so M ≡ 0) ...
        one_band = lambda defocus, *args: torch.zeros_like(defocus, dtype=torch.long)  # noqa: E731
        monkeypatch.setattr("magicbokeh.models.attention.defocus_bands", one_band)
        one_region = paper(lq, defocus)
    torch.testing.assert_close(unmasked, one_region, rtol=0, atol=1e-6)
    assert (unmasked - masked).abs().max() > 1e-3  # ... and not what the two-region mask gives


def _train_toy(tmp_path, monkeypatch, experiment: str, *extra: str):
    """train(cfg) for 2 steps at toy sizes (``extra`` overrides win), with the trainer and its batches captured."""
    from magicbokeh.training.train import train

    trainers, batches = [], []
    _spy(monkeypatch, Trainer, "fit", lambda self: trainers.append(self))
    _spy(monkeypatch, Trainer, "_loss", lambda self, phase, batch, *a: batches.append((phase, batch)))
    extra = [*PAPER_ON_CPU, *extra, "trainer.max_steps=2"]
    keys = {override.split("=")[0] for override in extra}
    toy = [override for override in _toy_overrides(tmp_path, experiment) if override.split("=")[0] not in keys]
    train(compose_config("train", [f"experiment={experiment}", *toy, *extra]))
    return trainers[0], batches


@pytest.mark.slow
def test_joint_really_trains_every_group_with_one_optimizer_on_mixed_batches(tmp_path, monkeypatch):
    trainer, batches = _train_toy(
        tmp_path, monkeypatch, "ablation_joint", "trainer.defocus_depth=null", "data.batch_size=4",
        "trainer.schedule.pretrain_steps=0",  # the ablation's own value (the toy settings pre-train one step)
    )  # fmt: skip
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert list(trainer.optimizers) == ["joint"] and list(trainer.streams) == ["mixed"]
    every_group = {name for phase in ("sr_pretrain", "bokeh", "sr") for name in model.phase_parameter_names(phase)}
    optimized = {id(p) for group in trainer.optimizers["joint"].param_groups for p in group["params"]}
    assert optimized == {id(p) for name, p in model.named_parameters() if name in every_group}
    assert [phase for phase, _ in batches] == ["joint", "joint"]
    tasks = [task for _, batch in batches for task in batch["task"]]
    assert set(tasks) == {"bokeh", "sr"}, tasks  # bokeh and SR samples inside the same batches


@pytest.mark.slow
def test_no_da_depth_really_conditions_on_plain_depth_of_the_lq_input(tmp_path, monkeypatch):
    from magicbokeh.depth import build_depth_model
    from magicbokeh.training.defocus_source import DepthDefocus

    torch.manual_seed(0)
    plain = build_depth_model("tiny", input_size=None).save(tmp_path / "depth-anything")  # a tiny "Depth Anything"
    calls = []  # (lq, ground-truth defocus, condition the model got) per training micro-batch
    original = DepthDefocus.__call__

    def recording(self, lq_images, defocus, K):
        condition = original(self, lq_images, defocus, K)
        calls.append((lq_images.clone(), defocus.clone(), condition.clone()))
        return condition

    monkeypatch.setattr(DepthDefocus, "__call__", recording)
    overrides = [
        f"paths.depth_anything={plain}", "paths.da_depth=/nonexistent/da-depth",
        "trainer.defocus_depth.teacher.size=tiny", "trainer.defocus_depth.teacher.input_size=null",
    ]  # fmt: skip
    cfg = compose_config("train", ["experiment=ablation_no_da_depth", *overrides])
    # The plain Depth-Anything weights, not the degradation-aware student's (paths.da_depth does not even exist).
    assert cfg.trainer.defocus_depth.source == "teacher_lq"
    assert cfg.trainer.defocus_depth.teacher.weights == str(plain)
    assert cfg.trainer.defocus_depth.teacher.config_key == "paths.depth_anything"
    _, batches = _train_toy(tmp_path, monkeypatch, "ablation_no_da_depth", *overrides)
    assert [phase for phase, _ in batches] == ["sr_pretrain", "bokeh"] and len(calls) == 2
    for (_, batch), (lq, ground_truth, _) in zip(batches, calls, strict=True):
        assert torch.equal(lq, batch["lq"]) and torch.equal(ground_truth, batch["defocus"])  # the step's LQ input
    (_, _, sr_condition), (_, bokeh_truth, bokeh_condition) = calls
    assert torch.count_nonzero(sr_condition) == 0  # SR samples have K = 0: all-zero whatever the depth says
    assert bokeh_condition.abs().sum() > 0 and not torch.allclose(bokeh_condition, bokeh_truth)
