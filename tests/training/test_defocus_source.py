"""DepthDefocus: the training condition recomputed from a depth model run on the LQ input."""

from __future__ import annotations

import torch

from magicbokeh.depth import build_depth_model
from magicbokeh.training.defocus_source import DepthDefocus


def test_depth_defocus_follows_the_formula_and_keeps_sr_samples_at_zero():
    torch.manual_seed(0)
    depth = build_depth_model("tiny", None, input_size=None)
    lq = torch.rand(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    gt_defocus = torch.zeros(2, 1, 28, 28)
    gt_defocus[0, :, :, 14:] = 0.5  # sample 0: left half in focus; sample 1: SR sample (K = 0)
    K = torch.tensor([16.0, 0.0])
    defocus = DepthDefocus(depth)(lq, gt_defocus, K)
    assert defocus.shape == (2, 1, 28, 28)
    assert defocus[1].abs().max() == 0
    disparity = depth.predict_disparity(lq)
    focus = disparity[0, :, :, :14].flatten().median()
    assert torch.allclose(defocus[0], ((disparity[0] - focus).abs() * 0.5).clamp(0, 1), atol=0.02)
