"""The defocus map the model is conditioned on, and FAMA's in-focus rule and bands (DESIGN §1, official convention).

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


def defocus_bands(defocus: torch.Tensor, num_bands: int, threshold: float = IN_FOCUS_THRESHOLD) -> torch.Tensor:
    """Integer ``B×1×H×W`` band index of every pixel: FAMA's ``levels:N`` partition of the defocus range.

    Band 0 is the in-focus region (``defocus ≤ threshold``, :func:`in_focus_mask`); bands 1 … N−1 split
    ``(threshold, 1]`` into N−1 equal intervals closed on the right, i.e. with ``w = (1 − threshold)/(N − 1)``

        band = 0                                   if δ ≤ threshold
        band = clamp(⌈(δ − threshold)/w⌉, 1, N−1)  otherwise

    so ``num_bands=2`` is exactly the in-focus / out-of-focus split of the release.
    """
    if defocus.ndim != 4 or defocus.shape[1] != 1:
        raise InvalidInputError(f"defocus must be B×1×H×W, got shape {tuple(defocus.shape)}")
    if int(num_bands) != num_bands or num_bands < 2:
        raise ParameterError(f"the number of defocus bands must be an integer ≥ 2, got {num_bands}")
    if not 0 <= threshold < 1:
        raise ParameterError(f"the in-focus threshold must be in [0, 1), got {threshold}")
    width = (1.0 - threshold) / (num_bands - 1)
    out_of_focus = torch.ceil((defocus - threshold) / width).clamp(1, num_bands - 1).to(torch.int64)
    return torch.where(in_focus_mask(defocus, threshold), 0, out_of_focus)
