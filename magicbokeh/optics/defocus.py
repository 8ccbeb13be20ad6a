"""The defocus map the model is conditioned on, and FAMA's in-focus rule (DESIGN §1, official convention).

    defocus = |d − d_f| · K / 32 ∈ [0, 1]

It is the circle of confusion of :mod:`magicbokeh.optics.coc` in units of ``max_coc_px`` (the renderer draws radius
``defocus · max_coc_px``), so a rendered training pair and the model's condition agree by construction. All-zero
defocus means "pure super-resolution" (every pixel in focus, FAMA mask ≡ 0).
"""

from __future__ import annotations

import torch

from magicbokeh.errors import InvalidInputError, ParameterError, plain_values
from magicbokeh.optics.coc import K_MAX, check_K, per_sample

IN_FOCUS_THRESHOLD = 0.1
"""A pixel is in focus when its defocus is ≤ 0.1 (official release: ``1 − (defocus > 0.1)``)."""


def _check_disparity(disparity: torch.Tensor) -> None:
    if disparity.ndim != 4 or disparity.shape[1] != 1:
        raise InvalidInputError(f"disparity must be B×1×H×W, got shape {tuple(disparity.shape)}")
    if not torch.isfinite(disparity).all():
        raise InvalidInputError("disparity contains NaN or Inf")
    if disparity.min() < 0 or disparity.max() > 1:
        raise InvalidInputError(
            f"disparity must be in [0, 1] (1 = nearest), got [{disparity.min():.4g}, {disparity.max():.4g}]"
        )


def defocus_map(
    disparity: torch.Tensor, focus_disparity: float | torch.Tensor, K: float | torch.Tensor
) -> torch.Tensor:
    """``|d − d_f| · K/32`` for ``B×1×H×W`` disparity in [0, 1]; focus and K are floats or length-B tensors."""
    _check_disparity(disparity)
    focus = torch.as_tensor(focus_disparity, dtype=torch.float64)
    if not torch.isfinite(focus).all() or (focus < 0).any() or (focus > 1).any():
        raise ParameterError(f"focus_disparity must be in [0, 1], got {plain_values(focus_disparity)}")
    check_K(K)
    strength = per_sample(K, disparity) / K_MAX
    return ((disparity - per_sample(focus_disparity, disparity)).abs() * strength).clamp(0.0, 1.0)


def in_focus_mask(defocus: torch.Tensor, threshold: float = IN_FOCUS_THRESHOLD) -> torch.Tensor:
    """Boolean ``B×1×H×W``: True where ``defocus ≤ threshold`` (FAMA's in-focus region)."""
    if defocus.ndim != 4 or defocus.shape[1] != 1:
        raise InvalidInputError(f"defocus must be B×1×H×W, got shape {tuple(defocus.shape)}")
    return defocus <= threshold
