"""Where the training condition's disparity comes from (``trainer.defocus_depth.source``, the depth axis).

``gt`` (default) keeps the dataset's defocus, made from its ground-truth disparity. The other sources
(:mod:`magicbokeh.depth.sources`) recompute it from a depth model run on one image of the sample:

    d̂ = depth_model(image),  d̂_f = median of d̂ over the region the target keeps sharp (ground-truth defocus ≤ 0.1),
    defocus = |d̂ − d̂_f| · K / 32

``student_lq`` (the degradation-aware student on the LQ input) trains on what the model sees at inference;
``teacher_lq`` (the plain, clean-image Depth-Anything-V2 on the LQ input) is the ``ablation_no_da_depth``
experiment; ``teacher_hq`` (the teacher on the sample's clean ``hq`` image) is an upper bound. SR samples have
K = 0, so their defocus stays all-zero whatever the depth model says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from magicbokeh.depth.focus import focus_from_mask
from magicbokeh.depth.sources import depth_source
from magicbokeh.errors import ConfigError, DatasetError
from magicbokeh.optics.defocus import defocus_map, in_focus_mask


class DepthDefocus:
    """``__call__(images, defocus, K)`` → the defocus map recomputed from ``depth_model`` on ``images``.

    ``source`` (``teacher_lq``, ``student_lq`` or ``teacher_hq``) names which image of a batch it sees
    (:meth:`condition`); the caller builds the matching depth model.
    """

    def __init__(self, depth_model: nn.Module, source: str = "student_lq") -> None:
        parsed = depth_source(source)
        if not parsed.estimated:
            raise ConfigError("the gt source needs no depth model: it keeps the dataset's defocus")
        self.source = parsed
        self.depth_model = depth_model.eval().requires_grad_(False)

    @property
    def image_key(self) -> str:
        """The batch key of the image the depth model sees: ``lq`` or ``hq``."""
        return self.source.image

    def condition(self, batch: Mapping[str, Any], device: torch.device) -> torch.Tensor:
        """The defocus condition of a training batch (the sample contract of :mod:`magicbokeh.data.datasets`)."""
        if self.image_key not in batch:
            raise DatasetError(
                f"trainer.defocus_depth.source={self.source.name} needs the clean image '{self.image_key}' in every "
                "training sample (the sample contract, data/README.md); this dataset does not provide it"
            )
        images, defocus, K = (batch[key].to(device) for key in (self.image_key, "defocus", "K"))
        return self(images, defocus, K)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, defocus: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        disparity = self.depth_model.predict_disparity(images).clamp(0.0, 1.0)
        # Focus on the same scene region as the ground truth: its in-focus pixels are never empty (the focus plane
        # itself has zero defocus), and K = 0 marks every pixel in focus.
        focus = focus_from_mask(disparity, in_focus_mask(defocus))
        return defocus_map(disparity, focus, K.to(disparity))
