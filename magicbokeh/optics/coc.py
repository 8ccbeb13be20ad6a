"""Circle of confusion in the disparity form, and the one conversion between pixels and the model's condition.

Thin-lens optics in disparity form (BokehMe, MPIB, Dr.Bokeh): for a lens focused at disparity d_f the blur radius of
a point at disparity d is proportional to |d − d_f|,

    r(p) = blur_px · |d(p) − d_f|                                         (radius in pixels)

where ``blur_px`` is the radius at |d − d_f| = 1 (BokehMe's K). The model is conditioned on the unitless

    defocus = |d − d_f| · K / 32 ∈ [0, 1]                                 (official MagicBokeh convention)

with the user-facing strength K ∈ [0, 32]. The renderer draws radius ``defocus · max_coc_px`` where ``max_coc_px``
is the radius at defocus 1 for the working resolution, hence ``blur_px = max_coc_px · K / 32``: a rendered training
pair and the model's condition agree by construction. :func:`blur_px_for_K` and :func:`K_for_blur_px` are the only
place this conversion is written.
"""

from __future__ import annotations

import math

import torch

from magicbokeh.errors import ParameterError, plain_values

K_MAX = 32.0
"""Largest user-facing blur strength; K = K_MAX maps |d − d_f| = 1 to defocus 1."""


def check_K(K: float | torch.Tensor) -> None:
    """Raise :class:`ParameterError` unless every K is finite and in [0, K_MAX]."""
    values = torch.as_tensor(K, dtype=torch.float64)
    if not torch.isfinite(values).all() or (values < 0).any() or (values > K_MAX).any():
        raise ParameterError(
            f"K must be in [0, {K_MAX:g}] (blur strength, official convention); got {plain_values(K)}"
        )


def blur_px_for_K(K: float | torch.Tensor, max_coc_px: float) -> float | torch.Tensor:
    """Renderer radius at |d − d_f| = 1 (pixels) for strength K: ``max_coc_px · K / 32``."""
    check_K(K)
    if not (math.isfinite(max_coc_px) and max_coc_px >= 0):
        raise ParameterError(f"max_coc_px must be a finite radius ≥ 0 in pixels, got {plain_values(max_coc_px)}")
    return K * (max_coc_px / K_MAX)


def K_for_blur_px(blur_px: float | torch.Tensor, max_coc_px: float) -> float | torch.Tensor:
    """Inverse of :func:`blur_px_for_K` (raises if the blur exceeds what K ≤ 32 can express)."""
    if max_coc_px <= 0:
        raise ParameterError(f"max_coc_px must be positive to invert the blur, got {plain_values(max_coc_px)}")
    K = blur_px * (K_MAX / max_coc_px)
    check_K(K)
    return K


def coc_radius_px(
    disparity: torch.Tensor, focus_disparity: float | torch.Tensor, blur_px: float | torch.Tensor
) -> torch.Tensor:
    """Per-pixel circle-of-confusion radius ``blur_px · |d − d_f|`` for ``B×1×H×W`` disparity.

    ``focus_disparity`` and ``blur_px`` may be floats or per-sample tensors of shape ``B``.
    """
    focus = per_sample(focus_disparity, disparity)
    blur = per_sample(blur_px, disparity)
    return blur * (disparity - focus).abs()


def per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float or a length-B tensor → a tensor broadcastable against ``B×1×H×W``."""
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return tensor.reshape(-1, 1, 1, 1) if tensor.ndim == 1 else tensor
