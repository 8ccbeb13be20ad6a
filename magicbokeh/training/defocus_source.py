"""Where the training condition's disparity comes from: the dataset (default), or a depth model run on the LQ input.

The second is what the model sees at inference, where no ground-truth disparity exists:

    d̂ = depth_model(LQ),  d̂_f = median of d̂ over the region the target keeps sharp (ground-truth defocus ≤ 0.1),
    defocus = |d̂ − d̂_f| · K / 32

With the degradation-aware student (``paths.da_depth``) this trains on inference-time conditions; with the plain
Depth-Anything-V2 (clean-image model, ``paths.depth_anything``) it is the ``ablation_no_da_depth`` experiment.
SR samples have K = 0, so their defocus stays all-zero whatever the depth model says.
"""

from __future__ import annotations

import torch
from torch import nn

from magicbokeh.depth.focus import focus_from_mask
from magicbokeh.optics.defocus import defocus_map, in_focus_mask


class DepthDefocus:
    """``__call__(lq_images, defocus, K)`` → the defocus map recomputed from ``depth_model`` on ``lq_images``."""

    def __init__(self, depth_model: nn.Module) -> None:
        self.depth_model = depth_model.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, lq_images: torch.Tensor, defocus: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        disparity = self.depth_model.predict_disparity(lq_images).clamp(0.0, 1.0)
        # Focus on the same scene region as the ground truth: its in-focus pixels are never empty (the focus plane
        # itself has zero defocus), and K = 0 marks every pixel in focus.
        focus = focus_from_mask(disparity, in_focus_mask(defocus))
        return defocus_map(disparity, focus, K.to(disparity))
