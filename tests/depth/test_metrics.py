"""Depth metrics: alignment recovers scale and shift; AbsRel and δ1 on hand-checked values."""

from __future__ import annotations

import pytest
import torch

from magicbokeh.depth.metrics import align_scale_shift, depth_metrics, disparity_metrics, scale_shift
from magicbokeh.errors import InvalidInputError


def test_alignment_recovers_an_affine_map_exactly():
    target = torch.rand(2, 1, 8, 8) + 0.1
    prediction = (target - 0.3) / 2.5
    scale, shift = scale_shift(prediction, target)
    assert torch.allclose(scale, torch.full((2,), 2.5), atol=1e-4)
    assert torch.allclose(shift, torch.full((2,), 0.3), atol=1e-4)
    metrics = disparity_metrics(prediction, target)
    assert torch.allclose(metrics["abs_rel"], torch.zeros(2), atol=1e-5)
    assert torch.equal(metrics["delta1"], torch.ones(2))


def test_alignment_uses_only_masked_pixels():
    target = torch.linspace(0.1, 1.0, 16).view(1, 1, 4, 4)
    prediction = target.clone()
    prediction[..., 0, :] = 5.0  # garbage outside the mask
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[..., 0, :] = False
    aligned = align_scale_shift(prediction, target, mask)
    assert torch.allclose(aligned[mask], target[mask], atol=1e-5)


def test_abs_rel_and_delta_by_hand():
    # After alignment, a prediction that is constant gets s = 0, t = mean(target) = 2 for targets {1, 3}.
    target = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    prediction = torch.zeros_like(target)
    metrics = disparity_metrics(prediction, target)
    # |2 − 1| / 1 = 1, |2 − 3| / 3 = 1/3 → mean 2/3; ratios 2 and 1.5 both ≥ 1.25
    assert metrics["abs_rel"].item() == pytest.approx(2 / 3)
    assert metrics["delta1"].item() == 0.0


def test_depth_metrics_align_in_disparity_space():
    depth = torch.tensor([1.0, 2.0, 4.0, 8.0]).view(1, 1, 2, 2)
    prediction = 3.0 / depth + 0.5  # a relative disparity: affine in 1/depth
    metrics = depth_metrics(prediction, depth, max_depth=10.0)
    assert metrics["abs_rel"].item() == pytest.approx(0.0, abs=1e-5)
    assert metrics["delta1"].item() == 1.0
    # pixels beyond max_depth are left out
    far = depth.clone()
    far[0, 0, 1, 1] = 100.0
    assert depth_metrics(prediction, far, max_depth=10.0)["abs_rel"].item() == pytest.approx(0.0, abs=1e-5)


def test_metric_errors():
    with pytest.raises(InvalidInputError, match="equal shape"):
        disparity_metrics(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5))
    with pytest.raises(InvalidInputError, match="no valid pixel"):
        disparity_metrics(torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
