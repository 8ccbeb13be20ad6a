"""Classical bokeh renderers: layered (multiplane) compositing and BokehMe-style scatter, pure torch.

Physics (thin lens, disparity form, see :mod:`magicbokeh.optics.coc`): a point at disparity d spreads, in linear
light, over the aperture shape scaled to radius ``r = blur_px · |d − d_f|``. Both renderers are *scatter*
operations: every source pixel distributes its energy over its own circle of confusion. Because the kernel depends
only on the radius, sources are grouped in radius (or disparity) slices with linear ("tent") weights, and each slice
is convolved once with its normalised aperture kernel by FFT (REFERENCE e1, "bin sources by radius"). A pixel
between two slice radii receives a mix of the two neighbouring kernels, so there are no banding seams.

* :func:`render_layers` — RGBA layers (back to front), each blurred by its own circle of confusion (premultiplied
  colour and alpha, Porter–Duff *over* in linear light). With the hidden content present in each layer this is the
  exact thin-lens image up to the per-layer fronto-parallel approximation: a blurred foreground edge becomes
  semi-transparent over the background (partial occlusion).
* :func:`render_bokeh` ``method="layered"`` — a single photo + disparity sliced into layers at disparities
  ``d_f + k·Δ`` (one slice exactly on the focal plane, so it stays sharp), composited back to front, then
  normalised by the accumulated alpha (MPIB-style, without inpainting). Sharp subjects are never covered by a
  blurred background (the background slice has a hole where the subject is), and a blurred foreground spreads over
  what lies behind it.
* :func:`render_bokeh` ``method="scatter"`` — BokehMe's classical renderer: slices by |r| only, ``S/W``
  normalisation, no layers (REFERENCE e1 steps 3–5). Each source's weight is normalised to 1 (BokehMe's
  ``1/(R² + 0.2)`` equals 1/area within ~25 %), which keeps in-focus pixels dominant at their own location.

Large circles of confusion (radius ≥ 2·``LOWRES_RADIUS``) are blurred at reduced resolution (area downsampling by
a power of two that keeps the radius ≥ ``LOWRES_RADIUS`` pixels, bilinear upsampling): the kernel's edge softens by
about ``scale`` pixels, which is small next to the radius. ``downsample=False`` turns this off.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from magicbokeh.errors import InvalidInputError, ParameterError
from magicbokeh.optics.aperture import ApertureSpec, aperture_kernel, as_aperture, kernel_half_size
from magicbokeh.optics.coc import blur_px_for_K, coc_radius_px

RENDER_METHODS = ("layered", "scatter")
DEFAULT_NUM_LAYERS = 24
LOWRES_RADIUS = 6.0
"""Smallest radius (pixels, at the reduced resolution) a large circle of confusion is blurred at."""
MIN_STEP_PX = 0.25
"""Slices closer than this in radius bring no visible accuracy; fewer slices are used when the blur is small."""
SHARP_RADIUS_PX = 0.5
"""Kernels below this radius are the identity; a slice at exactly this radius next to the focal plane keeps every
pixel whose circle of confusion is under half a pixel exactly sharp, whatever the spacing of the other slices."""
_LINEAR_FLOOR = 1e-12
"""Linear-light values below this map to 0 in the inverse gamma (error ≤ 4e-6 at γ = 2.2; keeps gradients finite)."""


@dataclass(frozen=True)
class HighlightBoost:
    """BokehMe's highlight boost (REFERENCE e1 step 2): emulate clipped HDR highlights so bokeh balls glow.

    ``I ← I·(1 + boost·m_oof·m_hl)`` with ``m_hl = clip(tanh(10·(I − threshold)), 0, 1)`` per channel, applied
    before linearisation. ``m_oof = clip(tanh(2·(r − 1)), 0, 1)`` selects out-of-focus pixels by their circle of
    confusion ``r`` in pixels (BokehMe uses ``(d − d_f)² > 0.01``; a radius keeps blur 0 an exact identity).
    """

    threshold: float = 220.0 / 255.0
    boost: float = 0.4

    def __post_init__(self) -> None:
        if not (0.0 <= self.threshold <= 1.0) or not (math.isfinite(self.boost) and self.boost >= 0):
            raise ParameterError(
                f"highlight threshold must be in [0, 1] and boost ≥ 0, got {self.threshold} and {self.boost}"
            )

    def __call__(self, images: torch.Tensor, radius_px: torch.Tensor) -> torch.Tensor:
        out_of_focus = torch.tanh(2.0 * (radius_px - 1.0)).clamp(0.0, 1.0)
        bright = torch.tanh(10.0 * (images - self.threshold)).clamp(0.0, 1.0)
        return images * (1.0 + self.boost * out_of_focus * bright)


def to_linear(images: torch.Tensor, gamma: float) -> torch.Tensor:
    """Display values → linear light, ``I^γ`` (a plain power law, the convention of BokehMe/MPIB/Dr.Bokeh)."""
    return images.clamp_min(0.0) ** gamma


def from_linear(linear: torch.Tensor, gamma: float) -> torch.Tensor:
    """Linear light → display values, ``L^(1/γ)``, with finite gradients at black."""
    safe = linear.clamp_min(_LINEAR_FLOOR)
    return torch.where(linear > _LINEAR_FLOOR, safe ** (1.0 / gamma), torch.zeros_like(linear))


# --------------------------------------------------------------------------------------------------------------------
# Public renderers
# --------------------------------------------------------------------------------------------------------------------
def render_bokeh(
    image: torch.Tensor,
    disparity: torch.Tensor,
    focus_disparity: float | torch.Tensor,
    blur_px: float | torch.Tensor,
    *,
    gamma: float = 2.2,
    aperture: str | ApertureSpec | Mapping = "disk",
    num_layers: int = DEFAULT_NUM_LAYERS,
    method: str = "layered",
    highlight: HighlightBoost | None = None,
    downsample: bool = True,
) -> torch.Tensor:
    """Render bokeh for photos ``B×3×H×W`` in [0, 1] with disparity ``B×1×H×W`` in [0, 1] (1 = nearest).

    ``focus_disparity`` and ``blur_px`` (radius in pixels where |d − d_f| = 1) are floats or length-B tensors.
    ``num_layers`` caps the number of slices (disparity slices for ``"layered"``, radius slices for
    ``"scatter"``). Returns ``B×3×H×W`` in [0, 1]; differentiable with respect to ``image``.
    """
    _check_images(image, "image", channels=3)
    _check_images(disparity, "disparity", channels=1)
    if disparity.shape[0] != image.shape[0] or disparity.shape[-2:] != image.shape[-2:]:
        raise InvalidInputError(
            f"disparity {tuple(disparity.shape)} must match the image {tuple(image.shape)} in batch and size"
        )
    if method not in RENDER_METHODS:
        raise ParameterError(f"renderer method must be one of {RENDER_METHODS}, got {method!r}")
    _check_settings(gamma, num_layers)
    spec = as_aperture(aperture)
    disparity = disparity.to(image.dtype)
    focus = _per_sample_floats(focus_disparity, image.shape[0], "focus_disparity")
    blur = _per_sample_floats(blur_px, image.shape[0], "blur_px")
    outputs = []
    for b in range(image.shape[0]):
        radius = coc_radius_px(disparity[b], focus[b], blur[b])
        source = highlight(image[b], radius) if highlight is not None else image[b]
        if method == "layered":
            linear = _render_sliced_photo(
                to_linear(source, gamma), disparity[b], focus[b], blur[b], spec, num_layers, downsample
            )
        else:
            linear = _render_scatter(to_linear(source, gamma), radius, spec, num_layers, downsample)
        outputs.append(from_linear(linear, gamma).clamp(0.0, 1.0))
    return torch.stack(outputs)


def render_layers(
    colors: torch.Tensor,
    alphas: torch.Tensor,
    layer_disparity: torch.Tensor,
    focus_disparity: float | torch.Tensor,
    blur_px: float | torch.Tensor,
    *,
    gamma: float = 2.2,
    aperture: str | ApertureSpec | Mapping = "disk",
    max_sublayers: int = 16,
    downsample: bool = True,
) -> torch.Tensor:
    """Composite RGBA layers with per-layer defocus: the ground-truth renderer for synthetic scenes.

    ``colors`` ``B×L×3×H×W`` in [0, 1] and straight (not premultiplied) ``alphas`` ``B×L×1×H×W``, ordered back to
    front (index 0 is the farthest). ``layer_disparity`` is ``B×L`` (fronto-parallel layers) or ``B×L×1×H×W`` (a
    disparity map per layer, e.g. a slanted background; it is sliced into at most ``max_sublayers`` radius slices
    that scatter additively, since a smooth surface barely occludes itself). Each layer's premultiplied linear
    colour and alpha are blurred by its circle of confusion, then composited back to front with *over*; where no
    layer covers a pixel completely the result is divided by the accumulated alpha. Returns ``B×3×H×W``.
    """
    if colors.ndim != 5 or colors.shape[2] != 3:
        raise InvalidInputError(f"colors must be B×L×3×H×W, got shape {tuple(colors.shape)}")
    if alphas.shape != (*colors.shape[:2], 1, *colors.shape[-2:]):
        raise InvalidInputError(f"alphas must be B×L×1×H×W matching colors, got {tuple(alphas.shape)}")
    if layer_disparity.shape not in (colors.shape[:2], alphas.shape):
        raise InvalidInputError(
            f"layer_disparity must be B×L or B×L×1×H×W matching colors {tuple(colors.shape)}, "
            f"got {tuple(layer_disparity.shape)}"
        )
    for name, tensor in (("colors", colors), ("alphas", alphas), ("layer_disparity", layer_disparity)):
        if not torch.isfinite(tensor).all():
            raise InvalidInputError(f"{name} contains NaN or Inf values")
    _check_settings(gamma, max_sublayers)
    spec = as_aperture(aperture)
    batch, num = colors.shape[:2]
    focus = _per_sample_floats(focus_disparity, batch, "focus_disparity")
    blur = _per_sample_floats(blur_px, batch, "blur_px")
    outputs = []
    for b in range(batch):
        maps = layer_disparity[b].to(colors.dtype)
        if maps.ndim == 1:
            maps = maps.reshape(num, 1, 1, 1).expand(num, 1, *colors.shape[-2:])
        linear = _render_layer_stack(
            to_linear(colors[b], gamma), alphas[b].clamp(0.0, 1.0), maps, focus[b], blur[b], spec, max_sublayers,
            downsample,
        )  # fmt: skip
        outputs.append(from_linear(linear, gamma).clamp(0.0, 1.0))
    return torch.stack(outputs)


@dataclass
class BokehRenderer:
    """Renderer settings from ``configs/renderer/*.yaml`` (``hydra.utils.instantiate`` builds one).

    ``max_coc_px`` is the circle-of-confusion radius at defocus 1 for the working resolution, so the renderer and
    the model's condition agree: ``blur_px = max_coc_px · K / 32`` (:func:`~magicbokeh.optics.coc.blur_px_for_K`).
    ``highlight`` may be a :class:`HighlightBoost`, ``None`` or a mapping ``{enabled, threshold, boost}``.
    """

    method: str = "layered"
    num_layers: int = DEFAULT_NUM_LAYERS
    gamma: float = 2.2
    aperture: ApertureSpec | Mapping | str = field(default_factory=ApertureSpec)
    max_coc_px: float = 24.0
    highlight: HighlightBoost | Mapping | None = None
    downsample: bool = True

    def __post_init__(self) -> None:
        if self.method not in RENDER_METHODS:
            raise ParameterError(f"renderer method must be one of {RENDER_METHODS}, got {self.method!r}")
        _check_settings(self.gamma, self.num_layers)
        self.aperture = as_aperture(self.aperture)
        if isinstance(self.highlight, Mapping):
            settings = dict(self.highlight)
            enabled = settings.pop("enabled", True)
            self.highlight = HighlightBoost(**settings) if enabled else None

    def blur_px(self, K: float | torch.Tensor) -> float | torch.Tensor:
        """Radius in pixels at |d − d_f| = 1 for strength K ∈ [0, 32]."""
        return blur_px_for_K(K, self.max_coc_px)

    def __call__(
        self,
        images: torch.Tensor,
        disparity: torch.Tensor,
        focus_disparity: float | torch.Tensor,
        K: float | torch.Tensor,
    ) -> torch.Tensor:
        """Render photos at strength K (official convention) with these settings."""
        return render_bokeh(
            images, disparity, focus_disparity, self.blur_px(K), gamma=self.gamma, aperture=self.aperture,
            num_layers=self.num_layers, method=self.method, highlight=self.highlight, downsample=self.downsample,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Slicing and per-slice blur
# --------------------------------------------------------------------------------------------------------------------
def _render_sliced_photo(
    linear: torch.Tensor,
    disparity: torch.Tensor,
    focus: float,
    blur: float,
    spec: ApertureSpec,
    num_layers: int,
    downsample: bool,
) -> torch.Tensor:
    """One photo sliced in disparity, layers composited back to front, normalised by the accumulated alpha."""
    d_min, d_max = float(disparity.min()), float(disparity.max())
    positions = _slice_grid(d_min, d_max, focus, blur, num_layers)
    pad = _margin(blur * max(abs(d_max - focus), abs(d_min - focus)), downsample)
    linear, disparity = _pad_canvas(linear, pad), _pad_canvas(disparity, pad)
    extent = _Extent(disparity)
    # Colour and alpha travel together as premultiplied RGBA: source = (L, 1) scaled by each slice's alpha.
    source = torch.cat([linear, torch.ones_like(disparity)])
    total = torch.zeros_like(source)
    for index, position in enumerate(positions):  # ascending disparity = back to front
        radius = blur * abs(position - focus)
        lower, upper = _neighbours(positions, index)
        box = extent.box(lower, upper, _margin(radius, downsample))
        if box is None:
            continue
        window = (slice(None), slice(box[0], box[1]), slice(box[2], box[3]))
        depth = disparity[window]
        # Soft slicing turned into over-compositing alphas. With tent weights w_k, slice k gets
        # α_k = w_k / Σ_{j≤k} w_j, so a pixel shared by slices k and k+1 (weights 1−w, w) is opaque in slice k and the
        # two slices reproduce it exactly instead of letting farther slices show through. On a uniform grid this is
        # the rising half of the tent up to t_k, 1 on (t_k, t_{k+1}) and 0 from t_{k+1} on.
        rising = (1.0 - (position - depth) / (position - lower)).clamp(0.0, 1.0)
        layer_alpha = torch.where(depth <= position, rising, (depth < upper).to(depth.dtype))
        blurred = _blur_region(layer_alpha * source[window], radius, spec, downsample)
        total = _paste(total, blurred + (1.0 - blurred[3:]) * total[window], box)
    height, width = _height(linear, pad), _width(linear, pad)
    return _unpremultiply(total[:3], total[3:])[..., pad : pad + height, pad : pad + width]


def _render_scatter(
    linear: torch.Tensor, radius: torch.Tensor, spec: ApertureSpec, num_layers: int, downsample: bool
) -> torch.Tensor:
    """BokehMe's scatter: ``S(p) = Σ_q k_{r(q)}(p − q)·L(q)``, ``W(p) = Σ_q k_{r(q)}(p − q)``, output ``S/W``."""
    r_max = float(radius.max())
    pad = _margin(r_max, downsample)
    linear, radius = _pad_canvas(linear, pad), _pad_canvas(radius, pad)
    positions = _slice_grid(0.0, r_max, 0.0, 1.0, num_layers)
    extent = _Extent(radius)
    source = torch.cat([linear, torch.ones_like(radius)])
    total = torch.zeros_like(source)
    for index, position in enumerate(positions):
        lower, upper = _neighbours(positions, index)
        box = extent.box(lower, upper, _margin(position, downsample))
        if box is None:
            continue
        window = (slice(None), slice(box[0], box[1]), slice(box[2], box[3]))
        weight = _tent(radius[window], position, lower, upper)
        blurred = _blur_region(weight * source[window], position, spec, downsample)
        total[window] += blurred
    height, width = _height(linear, pad), _width(linear, pad)
    out = _unpremultiply(total[:3], total[3:])
    return out[..., pad : pad + height, pad : pad + width]


class _Extent:
    """Row and column ranges of a ``1×H×W`` map (over ``mask`` only, if given), to find a slice's bounding box
    without scanning the map again for every slice."""

    def __init__(self, values: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        self.shape = values.shape[-2:]
        low, high = values[0], values[0]
        if mask is not None:
            low = torch.where(mask[0], low, torch.full_like(low, math.inf))
            high = torch.where(mask[0], high, torch.full_like(high, -math.inf))
        self.row_min, self.row_max = low.amin(dim=1), high.amax(dim=1)
        self.col_min, self.col_max = low.amin(dim=0), high.amax(dim=0)

    def box(self, low: float, high: float, margin: int) -> tuple[int, int, int, int] | None:
        """Box (y0, y1, x0, x1) holding every pixel with a value in the open interval (low, high), plus margin."""
        rows = torch.nonzero((self.row_max > low) & (self.row_min < high))
        cols = torch.nonzero((self.col_max > low) & (self.col_min < high))
        if rows.numel() == 0 or cols.numel() == 0:
            return None
        height, width = self.shape
        return (
            max(int(rows[0]) - margin, 0),
            min(int(rows[-1]) + 1 + margin, height),
            max(int(cols[0]) - margin, 0),
            min(int(cols[-1]) + 1 + margin, width),
        )


def _paste(canvas: torch.Tensor, region: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """``canvas`` with ``region`` written into ``box``, out of place (autograd-safe, no full-canvas arithmetic)."""
    y0, y1, x0, x1 = box
    if (y0, y1, x0, x1) == (0, canvas.shape[-2], 0, canvas.shape[-1]):
        return region
    band = canvas[:, y0:y1].slice_scatter(region, dim=2, start=x0, end=x1)
    return canvas.slice_scatter(band, dim=1, start=y0, end=y1)


def _render_layer_stack(
    linear: torch.Tensor,
    alphas: torch.Tensor,
    maps: torch.Tensor,
    focus: float,
    blur: float,
    spec: ApertureSpec,
    max_sublayers: int,
    downsample: bool,
) -> torch.Tensor:
    """``L×3×H×W`` linear colours, ``L×1×H×W`` alphas and disparity maps → linear ``3×H×W``."""
    spans = []
    for layer in range(linear.shape[0]):
        support = maps[layer][alphas[layer] > 0]
        spans.append((float(support.min()), float(support.max())) if support.numel() else None)
    if all(span is None for span in spans):
        raise InvalidInputError("every layer is fully transparent (all alphas are 0); nothing to render")
    r_max = max(blur * max(abs(hi - focus), abs(lo - focus)) for lo, hi in filter(None, spans))
    pad = _margin(r_max, downsample)
    total = None
    for layer, span in enumerate(spans):
        if span is None:
            continue
        layer_alpha = _pad_canvas(alphas[layer], pad)
        source = torch.cat([layer_alpha * _pad_canvas(linear[layer], pad), layer_alpha])  # premultiplied RGBA
        depth = _pad_canvas(maps[layer], pad)
        extent = _Extent(depth, layer_alpha > 0)
        positions = _slice_grid(span[0], span[1], focus, blur, max_sublayers)
        blurred_layer = torch.zeros_like(source)
        for index, position in enumerate(positions):
            radius = blur * abs(position - focus)
            lower, upper = _neighbours(positions, index)
            box = extent.box(lower, upper, _margin(radius, downsample))
            if box is None:
                continue
            window = (slice(None), slice(box[0], box[1]), slice(box[2], box[3]))
            weight = _tent(depth[window], position, lower, upper)
            blurred = _blur_region(weight * source[window], radius, spec, downsample)
            blurred_layer[window] += blurred  # in-place add into a fresh buffer: autograd-safe, no copy
        # Sub-slices of one layer with different radii can pile up above full coverage; rescale to alpha ≤ 1.
        blurred_layer = blurred_layer / blurred_layer[3:].clamp_min(1.0)
        total = blurred_layer if total is None else blurred_layer + (1.0 - blurred_layer[3:]) * total
    height, width = linear.shape[-2:]
    return _unpremultiply(total[:3], total[3:])[..., pad : pad + height, pad : pad + width]


def _slice_grid(lo: float, hi: float, focus: float, blur: float, max_slices: int) -> list[float]:
    """Ascending slice disparities covering [lo, hi], at most ``max_slices`` of them.

    A uniform grid ``anchor + k·Δ`` with the anchor at the focus clamped to [lo, hi]: a slice lies exactly on the
    focal plane when the content reaches it (radius 0), and a constant-disparity layer gets one slice at its own
    disparity. Δ is the smallest spacing that fits the cap, never finer than :data:`MIN_STEP_PX` in radius. When the
    focal plane is on the grid, slices at radius :data:`SHARP_RADIUS_PX` on either side are added, so pixels whose
    circle of confusion is under half a pixel stay exactly sharp instead of borrowing from the first blurred slice.
    """
    anchor = min(max(focus, lo), hi)
    below, above = anchor - lo, hi - anchor
    if blur * (hi - lo) < MIN_STEP_PX / 2:
        return [anchor]
    sharp = SHARP_RADIUS_PX / blur
    step = max((hi - lo) / (max_slices - 5), MIN_STEP_PX / blur)
    positions = [anchor + k * step for k in range(-math.ceil(below / step), math.ceil(above / step) + 1)]
    if anchor == focus and step > sharp:
        positions += [anchor - sharp] if below > 0 else []
        positions += [anchor + sharp] if above > 0 else []
    return sorted(positions)


def _neighbours(positions: list[float], index: int) -> tuple[float, float]:
    """The slice positions on either side of ``positions[index]`` (±inf at the ends of the grid)."""
    lower = positions[index - 1] if index > 0 else -math.inf
    upper = positions[index + 1] if index + 1 < len(positions) else math.inf
    return lower, upper


def _tent(values: torch.Tensor, position: float, lower: float, upper: float) -> torch.Tensor:
    """Linear-interpolation weight of ``values`` to the grid point ``position`` between its neighbours ``lower`` and
    ``upper`` (a grid's weights sum to 1; beyond the end slices the weight stays 1)."""
    rising = 1.0 - (position - values) / (position - lower)
    falling = 1.0 - (values - position) / (upper - position)
    return torch.where(values <= position, rising, falling).clamp(0.0, 1.0)


def _lowres_scale(radius: float, downsample: bool) -> int:
    """Power-of-two downsampling factor that keeps the radius ≥ LOWRES_RADIUS pixels (1 = full resolution)."""
    if not downsample or radius < 2 * LOWRES_RADIUS:
        return 1
    return 2 ** math.floor(math.log2(radius / LOWRES_RADIUS))


def _margin(radius: float, downsample: bool) -> int:
    """How far (pixels) a slice of this radius spreads, including the bilinear upsampling of reduced-resolution blur."""
    scale = _lowres_scale(radius, downsample)
    return kernel_half_size(radius) + 1 + (scale if scale > 1 else 0)


def _blur_region(region: torch.Tensor, radius: float, spec: ApertureSpec, downsample: bool) -> torch.Tensor:
    scale = _lowres_scale(radius, downsample)
    if scale == 1:
        return _convolve_same(region, aperture_kernel(radius, spec, dtype=region.dtype, device=region.device))
    height, width = region.shape[-2:]
    padded = F.pad(region, (0, (-width) % scale, 0, (-height) % scale))
    small = F.avg_pool2d(padded[None], scale)[0]
    kernel = aperture_kernel(radius / scale, spec, dtype=region.dtype, device=region.device)
    blurred = F.interpolate(_convolve_same(small, kernel)[None], scale_factor=scale, mode="bilinear")[0]
    return blurred[..., :height, :width]


def _convolve_same(region: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Linear (zero-padded) 2-D convolution of ``C×h×w`` with a centred odd kernel via real FFTs, same size out."""
    size = kernel.shape[-1]
    if size == 1:
        return region * kernel[0, 0]
    half = size // 2
    height, width = region.shape[-2:]
    fft_h, fft_w = _fast_length(height + half), _fast_length(width + half)
    # Kernel centre moved to index (0, 0) so the circular convolution is not shifted; the zero padding of at least
    # `half` rows/columns keeps the wrap-around out of the cropped output.
    wrapped = torch.roll(F.pad(kernel, (0, fft_w - size, 0, fft_h - size)), shifts=(-half, -half), dims=(0, 1))
    spectrum = torch.fft.rfft2(region, s=(fft_h, fft_w)) * torch.fft.rfft2(wrapped)
    return torch.fft.irfft2(spectrum, s=(fft_h, fft_w))[..., :height, :width]


def _fast_length(n: int) -> int:
    """Smallest 2^a·3^b·5^c ≥ n (sizes the FFT handles fastest)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _pad_canvas(tensor: torch.Tensor, pad: int) -> torch.Tensor:
    """Mirror the borders so light beyond the frame continues the scene (a constant image stays constant)."""
    if pad == 0:
        return tensor
    mode = "reflect" if pad < min(tensor.shape[-2:]) else "replicate"
    return F.pad(tensor, (pad, pad, pad, pad), mode=mode)


def _unpremultiply(color: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return torch.where(alpha > 1e-12, color / alpha.clamp_min(1e-12), torch.zeros_like(color))


def _height(padded: torch.Tensor, pad: int) -> int:
    return padded.shape[-2] - 2 * pad


def _width(padded: torch.Tensor, pad: int) -> int:
    return padded.shape[-1] - 2 * pad


# --------------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------------
def _check_images(tensor: torch.Tensor, name: str, *, channels: int) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != 4 or tensor.shape[1] != channels:
        raise InvalidInputError(f"{name} must be B×{channels}×H×W, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise InvalidInputError(f"{name} must be a floating-point tensor in [0, 1], got {tensor.dtype}")
    if not torch.isfinite(tensor).all():
        raise InvalidInputError(f"{name} contains NaN or Inf values")


def _check_settings(gamma: float, num_layers: int) -> None:
    if not (math.isfinite(gamma) and gamma > 0):
        raise ParameterError(f"gamma must be a positive number (2.2 is standard), got {gamma}")
    if int(num_layers) != num_layers or num_layers < 6:
        raise ParameterError(f"the number of layers/slices must be an integer ≥ 6, got {num_layers}")


def _per_sample_floats(value: float | torch.Tensor, batch: int, name: str) -> list[float]:
    values = torch.as_tensor(value, dtype=torch.float64).detach().cpu().flatten()
    if values.numel() not in (1, batch):
        raise InvalidInputError(f"{name} must be a float or have one value per sample ({batch}), got {values.numel()}")
    if not torch.isfinite(values).all() or (values < 0).any():
        raise ParameterError(f"{name} must be finite and ≥ 0, got {value}")
    return values.expand(batch).tolist()
