"""The depth axis: each source (gt, teacher_lq, student_lq, teacher_hq) produces the defocus map it claims, in
training (``trainer.defocus_depth.source``) and in evaluation (``benchmark.disparity``). Spy depth models record
which image they saw and return a disparity of their own; a spy on ``defocus_map`` records what went into it."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from magicbokeh.data.datasets import SyntheticBokehDataset
from magicbokeh.data.io import read_disparity, read_image
from magicbokeh.depth.focus import focus_from_mask
from magicbokeh.depth.sources import DEPTH_SOURCES, depth_source
from magicbokeh.errors import ConfigError, DatasetError
from magicbokeh.evaluation import runner
from magicbokeh.evaluation.baselines import BicubicPipeline
from magicbokeh.evaluation.inputs import Protocol, SampleInputs
from magicbokeh.optics.defocus import in_focus_mask
from magicbokeh.training import defocus_source
from magicbokeh.training.defocus_source import DepthDefocus
from magicbokeh.training.train import _defocus_depth
from magicbokeh.utils.config import compose_config
from tests.evaluation.conftest import make_benchmark

SPIES: list[SpyDepth] = []


class SpyDepth:
    """A depth model that remembers every image batch it saw and answers with a ramp disparity of its own slope
    (each model a different one, so the map tells which model made it). Built by Hydra from a depth node."""

    def __init__(self, slope: float = 1.0, **node):
        self.slope, self.node, self.seen = float(slope), node, []
        SPIES.append(self)

    def eval(self):
        return self

    def requires_grad_(self, flag):
        return self

    def disparity_of(self, images: torch.Tensor) -> torch.Tensor:
        width = images.shape[-1]
        ramp = torch.linspace(0, 1, width).expand(images.shape[0], 1, images.shape[-2], width)
        return (ramp * self.slope).clamp(0, 1)

    def predict_disparity(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images.clone())
        return self.disparity_of(images)


def _batch(seed: int = 0):
    """Two synthetic bokeh samples (degraded, so lq ≠ hq) and one SR sample, collated."""
    from magicbokeh.data.degradations import RealESRGANDegradation

    dataset = SyntheticBokehDataset(size=32, length=4, seed=seed, degradation=RealESRGANDegradation(scale=2),
                                    max_coc_px=4.0, K_range=(16.0, 32.0), focus="subject")  # fmt: skip
    samples = [dataset[0], dataset[1]]
    hq = samples[0]["hq"]
    samples.append({**samples[0], "lq": hq.clone(), "hq": hq, "target": hq, "task": "sr", "K": torch.tensor(0.0),
                    "defocus": torch.zeros_like(samples[0]["defocus"])})  # fmt: skip
    keys = ("lq", "hq", "target", "defocus", "K", "disparity")
    return {key: torch.stack([sample[key] for sample in samples]) for key in keys}


def test_samples_carry_the_clean_hq_image():
    from magicbokeh.data.degradations import RealESRGANDegradation

    clean = SyntheticBokehDataset(size=32, length=2, seed=3, max_coc_px=4.0)[1]
    degraded = SyntheticBokehDataset(size=32, length=2, seed=3, max_coc_px=4.0,
                                     degradation=RealESRGANDegradation(scale=2))[1]  # fmt: skip
    assert clean["hq"].shape == clean["lq"].shape == (3, 32, 32)
    assert torch.equal(clean["hq"], clean["lq"]) and torch.equal(degraded["hq"], clean["hq"])  # same scene
    assert not torch.equal(degraded["lq"], degraded["hq"])


@pytest.mark.parametrize("source", ["teacher_lq", "student_lq", "teacher_hq"])
def test_training_condition_comes_from_the_named_model_on_the_named_image(source, monkeypatch):
    SPIES.clear()
    spy_path = f"{__name__}.SpyDepth"
    cfg = compose_config("train", [
        f"trainer.defocus_depth.source={source}",
        f"trainer.defocus_depth.teacher._target_={spy_path}", "+trainer.defocus_depth.teacher.slope=0.5",
        f"trainer.defocus_depth.student._target_={spy_path}", "+trainer.defocus_depth.student.slope=0.9",
    ])  # fmt: skip
    into_formula = []
    original = defocus_source.defocus_map  # the optics formula

    def recording(disparity, focus, K):
        into_formula.append((disparity.clone(), focus.clone(), K.clone()))
        return original(disparity, focus, K)

    monkeypatch.setattr(defocus_source, "defocus_map", recording)
    condition = _defocus_depth(cfg.trainer.defocus_depth, torch.device("cpu"))
    (spy,) = SPIES  # only the model the source names is built
    weights_key = "paths.depth_anything" if depth_source(source).model == "teacher" else "paths.da_depth"
    assert spy.node["weights"] == OmegaConf.select(cfg, weights_key)
    batch = _batch()
    defocus = condition.condition(batch, torch.device("cpu"))
    (seen,) = spy.seen
    assert torch.equal(seen, batch[depth_source(source).image])  # the LQ input, or the clean HQ image
    ((disparity, focus, K),) = into_formula
    assert torch.equal(disparity, spy.disparity_of(seen))  # the spy's own map went into the formula
    assert torch.equal(K, batch["K"])
    expected_focus = focus_from_mask(disparity, in_focus_mask(batch["defocus"]))
    torch.testing.assert_close(focus, expected_focus)  # focus: the ground truth's sharp region, on the new map
    torch.testing.assert_close(defocus, original(disparity, expected_focus, batch["K"]))
    assert torch.count_nonzero(defocus[2]) == 0  # the SR sample (K = 0) stays all-zero
    assert not torch.allclose(defocus[:2], batch["defocus"][:2])  # not the ground truth's map


def test_gt_builds_no_depth_model_and_keeps_the_dataset_defocus():
    SPIES.clear()
    cfg = compose_config("train", [f"trainer.defocus_depth.teacher._target_={__name__}.SpyDepth"])
    assert cfg.trainer.defocus_depth.source == "gt"
    assert _defocus_depth(cfg.trainer.defocus_depth, torch.device("cpu")) is None and not SPIES
    assert _defocus_depth(None, torch.device("cpu")) is None
    with pytest.raises(ConfigError, match="gt, teacher_lq, student_lq, teacher_hq"):
        depth_source("teacher")
    with pytest.raises(ConfigError, match="gt source needs no depth model"):
        DepthDefocus(SpyDepth(), "gt")
    without_hq = {key: value for key, value in _batch().items() if key != "hq"}
    with pytest.raises(DatasetError, match="needs the clean image 'hq'"):
        DepthDefocus(SpyDepth(), "teacher_hq").condition(without_hq, torch.device("cpu"))


@pytest.mark.parametrize("source", DEPTH_SOURCES)
def test_evaluation_disparity_comes_from_the_named_image(source, tmp_path):
    """``benchmark.disparity=<source>``: the depth model (the caller builds the one the source names) sees the LQ or
    the clean HQ image whatever the method input; gt reads the benchmark's map and never calls a model."""
    root = make_benchmark(tmp_path / "bench", scenes=1, K_values=(16.0,))
    (sample,) = runner.load_samples(root)[1]
    spy = SpyDepth(slope=0.7)
    inputs = SampleInputs(Protocol(disparity=source, focus="mask"), tmp_path / "run", BicubicPipeline(depth_model=spy))
    case = inputs.case(sample)
    if source == "gt":
        assert not spy.seen and not inputs.needs_depth(sample)
        assert torch.equal(case.prepared.disparity, read_disparity(sample.disparity)[None])
        return
    (seen,) = spy.seen
    image = sample.lq if depth_source(source).image == "lq" else sample.hq
    assert torch.equal(seen, read_image(image)[None])
    assert not torch.equal(read_image(sample.lq), read_image(sample.hq))  # the two really differ here
    expected = spy.disparity_of(seen)
    assert torch.equal(case.prepared.disparity, expected)
    assert torch.equal(read_disparity(inputs.cache_path(sample))[None], expected)  # cached for the other stages
    # The focus is the median of that map inside the subject mask (benchmark.focus=mask).
    focus = focus_from_mask(expected, read_image(sample.mask)[None, :1] > 0.5)
    assert case.focus_disparity == pytest.approx(float(focus))


def test_evaluation_gt_refuses_samples_without_a_map(tmp_path):
    root = make_benchmark(tmp_path / "bench", scenes=1, K_values=(16.0,), with_disparity=False)
    (sample,) = runner.load_samples(root)[1]
    inputs = SampleInputs(Protocol(disparity="gt", focus="mask"), tmp_path / "run", BicubicPipeline())
    with pytest.raises(DatasetError, match="benchmark.disparity=gt but sample"):
        inputs.case(sample)
