"""Brute-force per-pixel scatter: the slow, obviously-correct reference the fast renderers are checked against.

Every source pixel q builds its own aperture kernel at its exact radius ``r(q) = blur_px·|d(q) − d_f|`` and adds
``k_{r(q)}(p − q)·value(q)`` to every target p (REFERENCE e1 step 4, without radius slicing, FFTs or reduced
resolution). It is O(N·R²) Python work, meant for tiny scenes in tests and for a crop in the benchmark. Borders
use the same mirror padding as the fast renderers (a boundary condition, not part of the algorithm).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from magicbokeh.optics.aperture import ApertureSpec, aperture_kernel, as_aperture, kernel_half_size
from magicbokeh.optics.render import from_linear, to_linear


def scatter_reference(values: torch.Tensor, radius: torch.Tensor, aperture: str | ApertureSpec | Mapping = "disk"):
    """``out(p) = Σ_q k_{r(q)}(p − q)·values(q)`` for ``C×H×W`` values and an ``H×W`` (or ``1×H×W``) radius map."""
    spec = as_aperture(aperture)
    radius = radius.reshape(values.shape[-2:])
    reach = kernel_half_size(float(radius.max()))
    height, width = values.shape[-2:]
    out = values.new_zeros(values.shape[0], height + 2 * reach, width + 2 * reach)
    for y, x in torch.nonzero(values.abs().amax(dim=0) > 0).tolist():
        kernel = aperture_kernel(float(radius[y, x]), spec, dtype=values.dtype, device=values.device)
        half = kernel.shape[-1] // 2
        top, left = y + reach - half, x + reach - half
        out[:, top : top + kernel.shape[-2], left : left + kernel.shape[-1]] += kernel * values[:, y, x, None, None]
    return out[:, reach : reach + height, reach : reach + width]


def render_scatter_reference(
    image: torch.Tensor,
    disparity: torch.Tensor,
    focus_disparity: float,
    blur_px: float,
    *,
    gamma: float = 2.2,
    aperture: str | ApertureSpec | Mapping = "disk",
) -> torch.Tensor:
    """BokehMe's scatter for one ``3×H×W`` photo: ``(S/W)^(1/γ)`` with exact per-pixel kernels."""
    radius = blur_px * (disparity - focus_disparity).abs()
    pad = kernel_half_size(float(radius.max())) + 1
    linear = _mirror(to_linear(image, gamma), pad)
    radius = _mirror(radius, pad)
    weight = torch.ones_like(radius)
    total = scatter_reference(torch.cat([linear, weight]), radius, aperture)
    out = (total[:3] / total[3:]).clamp_min(0.0)
    return from_linear(out, gamma)[:, pad:-pad, pad:-pad].clamp(0.0, 1.0)


def render_layers_reference(
    colors: torch.Tensor,
    alphas: torch.Tensor,
    layer_disparity: torch.Tensor,
    focus_disparity: float,
    blur_px: float,
    *,
    gamma: float = 2.2,
    aperture: str | ApertureSpec | Mapping = "disk",
) -> torch.Tensor:
    """Layered ground truth for one scene: ``L×3×H×W`` colours, ``L×1×H×W`` alphas and disparity maps (back to
    front); each layer's premultiplied linear colour and alpha scattered per pixel, then composited with *over*."""
    radius = blur_px * (layer_disparity - focus_disparity).abs() * (alphas > 0)
    pad = kernel_half_size(float(radius.max())) + 1
    color = alpha = 0.0
    for layer in range(colors.shape[0]):
        layer_alpha = _mirror(alphas[layer], pad)
        premultiplied = torch.cat([layer_alpha * _mirror(to_linear(colors[layer], gamma), pad), layer_alpha])
        blurred = scatter_reference(premultiplied, _mirror(radius[layer], pad), aperture)
        blurred = blurred / blurred[3:].clamp_min(1.0)
        color = blurred[:3] + (1.0 - blurred[3:]) * color
        alpha = blurred[3:] + (1.0 - blurred[3:]) * alpha
    out = color / alpha.clamp_min(1e-12)
    return from_linear(out, gamma)[:, pad:-pad, pad:-pad].clamp(0.0, 1.0)


def _mirror(tensor: torch.Tensor, pad: int) -> torch.Tensor:
    mode = "reflect" if pad < min(tensor.shape[-2:]) else "replicate"
    return F.pad(tensor, (pad, pad, pad, pad), mode=mode)
