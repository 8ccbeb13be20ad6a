"""Distillation: the losses behave as their equations say; the loop runs, checkpoints, resumes and writes a student."""

from __future__ import annotations

import json

import pytest
import torch

from magicbokeh.data.datasets import DepthDistillDataset
from magicbokeh.data.degradations import RealESRGANDegradation
from magicbokeh.depth import build_depth_model
from magicbokeh.depth.distill import (
    DistillLossWeights,
    distillation_loss,
    feature_distillation_loss,
    gradient_matching_loss,
    ssi_l1_loss,
    ssi_normalize,
)
from magicbokeh.depth.model import DepthForward
from magicbokeh.training.depth_distill import DistillSettings, distill
from magicbokeh.training.tracking import read_metrics


def test_ssi_normalization_removes_scale_and_shift():
    d = torch.rand(2, 1, 8, 8)
    assert torch.allclose(ssi_normalize(3.0 * d + 1.5), ssi_normalize(d), atol=1e-5)
    assert ssi_l1_loss(3.0 * d + 1.5, d) < 1e-5 and gradient_matching_loss(3.0 * d + 1.5, d) < 1e-4
    assert ssi_l1_loss(d, torch.rand(2, 1, 8, 8)) > 0.1


def test_gradient_loss_sees_edges_that_ssi_misses_less():
    target = torch.zeros(1, 1, 16, 16)
    target[..., 8:] = 1.0
    blurred = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand_as(target)
    assert gradient_matching_loss(blurred, target) > gradient_matching_loss(target, target) + 0.1


def test_feature_loss_is_cosine_distance():
    f = torch.randn(2, 5, 8)
    assert feature_distillation_loss([f], [3.0 * f], [0]) < 1e-6
    assert feature_distillation_loss([f], [-f], [0]) == pytest.approx(2.0)


def test_distillation_loss_terms_and_weights():
    teacher = DepthForward(torch.rand(1, 1, 8, 8), (torch.randn(1, 5, 4),))
    same = distillation_loss(teacher, teacher, DistillLossWeights(feature_layers=(0,)))[0]
    assert same < 1e-5
    student = DepthForward(torch.rand(1, 1, 8, 8), (torch.randn(1, 5, 4),))
    total, terms = distillation_loss(
        student, teacher, DistillLossWeights(feature=2.0, ssi=1.0, grad=0.0, feature_layers=(0,))
    )
    assert set(terms) == {"ssi", "grad", "feature"}
    assert total == pytest.approx(float(terms["ssi"] + 2.0 * terms["feature"]), rel=1e-5)


@pytest.fixture
def one_thread():
    """Tiny networks run ~10× faster single-threaded on a shared CPU (no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_distill_runs_resumes_and_improves(tmp_path, one_thread):
    torch.manual_seed(0)
    teacher = build_depth_model("tiny", input_size=None)
    settings = DistillSettings(
        steps=30, batch_size=4, lr=1e-4, head_lr=1e-3, log_every=5, eval_every=100, checkpoint_every=15
    )
    # Evaluated on its own 8 training scenes: 15 epochs must bring the student closer to the teacher there.
    train = evaluation = DepthDistillDataset(None, length=8, crop_size=28, degradation=RealESRGANDegradation(), seed=0)
    weights = DistillLossWeights()
    final = distill(teacher, train, evaluation, settings, weights, tmp_path / "run", seed=0)
    assert final["student/abs_rel"] < final["undistilled/abs_rel"]
    results = json.loads((tmp_path / "run" / "depth_results.json").read_text())
    assert results["steps"] == 30 and "gt/student/abs_rel" in results["final"]
    assert [r["step"] for r in read_metrics(tmp_path / "run") if "loss" in r] == [5, 10, 15, 20, 25, 30]
    student = build_depth_model("tiny", weights=tmp_path / "run" / "student", input_size=None)
    assert student.predict_disparity(torch.rand(1, 3, 28, 28)).shape == (1, 1, 28, 28)

    # Resuming from step 15 reproduces the uninterrupted run (the random teacher is rebuilt from the same seed).
    torch.manual_seed(0)
    resumed = distill(
        build_depth_model("tiny", input_size=None),
        train,
        evaluation,
        settings,
        weights,
        tmp_path / "resumed",
        seed=0,
        resume=str(tmp_path / "run" / "checkpoints" / "step_000015"),
    )
    assert resumed["student/abs_rel"] == pytest.approx(final["student/abs_rel"], rel=1e-4)
