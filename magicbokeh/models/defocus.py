"""The model's defocus condition (DESIGN §1, official convention) and the FAMA in-focus rule.

    defocus = |d − d_f| · K / 32 ∈ [0, 1]

All-zero defocus means "pure super-resolution" (every pixel in focus, FAMA mask ≡ 0). The network sees the map
repeated to three channels and mapped to [−1, 1] (:func:`defocus_to_condition`).
"""

from __future__ import annotations

import torch

from magicbokeh.data.io import images_to_pixel_values
from magicbokeh.errors import InvalidInputError, ParameterError
from magicbokeh.optics.coc import K_MAX, _per_sample, check_K

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
        raise ParameterError(f"focus_disparity must be in [0, 1], got {focus_disparity}")
    check_K(K)
    strength = _per_sample(K, disparity) / K_MAX
    return ((disparity - _per_sample(focus_disparity, disparity)).abs() * strength).clamp(0.0, 1.0)


def in_focus_mask(defocus: torch.Tensor, threshold: float = IN_FOCUS_THRESHOLD) -> torch.Tensor:
    """Boolean ``B×1×H×W``: True where ``defocus ≤ threshold`` (FAMA's in-focus region)."""
    if defocus.ndim != 4 or defocus.shape[1] != 1:
        raise InvalidInputError(f"defocus must be B×1×H×W, got shape {tuple(defocus.shape)}")
    return defocus <= threshold


def defocus_to_condition(defocus: torch.Tensor) -> torch.Tensor:
    """``B×1×H×W`` defocus in [0, 1] → the ControlNet condition ``B×3×H×W`` in [−1, 1]."""
    if defocus.ndim != 4 or defocus.shape[1] != 1:
        raise InvalidInputError(f"defocus must be B×1×H×W, got shape {tuple(defocus.shape)}")
    if not torch.isfinite(defocus).all():
        raise InvalidInputError("defocus contains NaN or Inf")
    return images_to_pixel_values(defocus.clamp(0.0, 1.0).expand(-1, 3, -1, -1))
