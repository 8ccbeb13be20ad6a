"""Real-ESRGAN second-order degradation, as configured by OSEDiff (REFERENCE §5.1 and §e2).

Three layers, BasicSR style:

* **Deterministic operations** (``add_blur``, ``add_resize``, ``add_resize_by_factor``, ``add_gaussian_noise``,
  ``add_poisson_noise``, ``add_jpeg``, ``quantize_8bit``; ``diff_jpeg`` in :mod:`magicbokeh.data.diff_jpeg`) and
  kernel builders (``mixed_kernel``, ``circular_lowpass_kernel``). Given their parameters (and, for noise, a
  generator) they always return the same tensor.
* **Random wrappers** (``random_add_blur``, ``random_resize``, ``random_add_noise``, ``random_add_jpeg``) that draw the
  parameters from a ``torch.Generator`` and call the deterministic operation.
* :class:`RealESRGANDegradation`, which first draws *all* parameters of one image into a
  :class:`DegradationParams` (:meth:`~RealESRGANDegradation.sample_params`), then applies them
  (:meth:`~RealESRGANDegradation.apply`). The split makes the parameters inspectable (tests check their statistics)
  and lets two images receive exactly the same degradation, noise included: the noise fields are drawn from a seed
  stored in the parameters. Poisson noise still depends on the image it is applied to (its rate is the image), which
  is why "identical" degradations of two different patches are identical in parameters, not in noise values.

Pipeline for an HR image of size H×W (``scale`` s, default 4)::

    blur(k1) → resize(r1) → noise → JPEG                                   first order
    [blur(k2)] → resize to (H/s·r2, W/s·r2) → noise → (JPEG, sinc) in random order with resize to (H/s, W/s)
    → resize back to H×W (random mode) → clamp and round to 8 bits

Images are ``B×3×H×W`` float in [0, 1] on any device. A batch is processed image by image with one generator, so
``degrade(batch, g)`` equals degrading the images one after another with the same generator. Every random draw comes
from the generator passed in, never from a global RNG.

The engine has two settings. Ours (the default; presets ``realesrgan``, ``zoom``): JPEG through the real codec
(libjpeg via OpenCV, CPU, on 8-bit images), resize sizes rounded (round(H·r)), grey Poisson noise on BT.601 luma, the
LR image rounded to 8 bits before it is resized back. OSEDiff's (preset ``osediff``): its differentiable JPEG
(:func:`~magicbokeh.data.diff_jpeg.diff_jpeg` with BasicSR's transposed tables), the first resize by
``F.interpolate(scale_factor=r1)`` and the later sizes truncated (int(H/s·r2), H // s), torchvision's grey weights
(0.2989 for red), one 8-bit rounding at the end. With the same sampled parameters OSEDiff's engine gives an LQ image
further from the HQ one (``python scripts/benchmark.py degradation-presets`` measures by how much and why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from magicbokeh.data.diff_jpeg import diff_jpeg
from magicbokeh.errors import InvalidInputError, ParameterError

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
FINAL_ORDERS = ("resize_sinc_jpeg", "jpeg_resize_sinc")
BT601_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights
# torchvision's rgb_to_grayscale, which BasicSR's grey Poisson noise (and so OSEDiff's) calls, rounds R's weight
TORCHVISION_LUMA = (0.2989, 0.587, 0.114)
JPEG_CODECS = ("libjpeg", "diff_jpeg")
RESIZE_GRIDS = ("rounded", "scale_factor")


# --------------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------------
def _centred_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if size < 1 or size % 2 == 0:
        raise ParameterError(f"kernel size must be a positive odd number, got {size}")
    axis = torch.arange(size, dtype=torch.float64) - size // 2
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return xx, yy


def mixed_kernel(
    kernel_type: str, size: int, sigma_x: float, sigma_y: float, rotation: float, beta: float = 1.0
) -> torch.Tensor:
    """A normalised ``size×size`` float32 blur kernel of one of :data:`KERNEL_TYPES`.

    With the quadratic form q = xᵀΣ⁻¹x, Σ = R(θ)·diag(σx², σy²)·R(θ)ᵀ:
    Gaussian exp(−q/2) (``iso``/``aniso``); generalized Gaussian exp(−q^β/2); plateau 1/(1 + q^β).
    The ``iso`` variants use σy = σx and θ = 0 whatever is passed.
    """
    if kernel_type not in KERNEL_TYPES:
        raise ParameterError(f"unknown kernel type '{kernel_type}'; expected one of {KERNEL_TYPES}")
    if sigma_x <= 0 or sigma_y <= 0 or beta <= 0:
        raise ParameterError(f"kernel σx, σy and β must be positive, got {sigma_x}, {sigma_y}, {beta}")
    if kernel_type.endswith("iso") and not kernel_type.endswith("aniso"):
        sigma_y, rotation = sigma_x, 0.0
    xx, yy = _centred_grid(size)
    cos, sin = math.cos(rotation), math.sin(rotation)
    # Coordinates in the kernel's principal axes; q = u²/σx² + v²/σy² is xᵀΣ⁻¹x for the rotated covariance.
    u = cos * xx + sin * yy
    v = -sin * xx + cos * yy
    q = (u / sigma_x) ** 2 + (v / sigma_y) ** 2
    if kernel_type.startswith("generalized"):
        kernel = torch.exp(-0.5 * q.pow(beta))
    elif kernel_type.startswith("plateau"):
        kernel = 1.0 / (1.0 + q.pow(beta))
    else:
        kernel = torch.exp(-0.5 * q)
    return (kernel / kernel.sum()).float()


def circular_lowpass_kernel(cutoff: float, size: int) -> torch.Tensor:
    """Normalised 2-D sinc (ideal circular low-pass) kernel: k(ρ) = ω_c·J₁(ω_c·ρ)/(2πρ), k(0) = ω_c²/(4π).

    Models the ringing/overshoot of sharpening and of band-limited resampling (Real-ESRGAN §3.2).
    """
    if not 0 < cutoff <= math.pi:
        raise ParameterError(f"sinc cut-off must be in (0, π], got {cutoff}")
    xx, yy = _centred_grid(size)
    rho = torch.sqrt(xx**2 + yy**2)
    safe_rho = torch.where(rho > 0, rho, torch.ones_like(rho))
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe_rho) / (2 * math.pi * safe_rho)
    kernel = torch.where(rho > 0, kernel, torch.full_like(kernel, cutoff**2 / (4 * math.pi)))
    return (kernel / kernel.sum()).float()


# --------------------------------------------------------------------------------------------------------------------
# Deterministic operations (B×3×H×W in [0, 1])
# --------------------------------------------------------------------------------------------------------------------
def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidInputError(f"images must be a B×3×H×W tensor in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise InvalidInputError(f"images must be floating point in [0, 1], got dtype {images.dtype}")


def add_blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Filter every channel with one ``k×k`` kernel (or one per image, ``B×k×k``), reflect padding.

    On the CPU the filtering goes through OpenCV's ``filter2D`` (same correlation and reflect-101 border, DFT for
    large kernels): torch's depthwise ``conv2d`` is 3–15× slower there and would miss the loader's throughput target.
    The two paths agree to ~2e-4; other devices use ``conv2d``.
    """
    _check_images(images)
    batch, channels, height, width = images.shape
    kernel = kernel.to(device=images.device, dtype=images.dtype)
    if kernel.ndim == 2:
        kernel = kernel.expand(batch, -1, -1)
    pad = kernel.shape[-1] // 2
    if images.device.type == "cpu" and images.dtype == torch.float32 and pad < min(height, width):
        arrays = images.detach().permute(0, 2, 3, 1).numpy()
        filtered = [
            cv2.filter2D(np.ascontiguousarray(array), -1, k.numpy(), borderType=cv2.BORDER_REFLECT_101)
            for array, k in zip(arrays, kernel)
        ]
        return torch.from_numpy(np.stack(filtered).reshape(batch, height, width, channels)).permute(0, 3, 1, 2)
    # reflect padding needs pad < side; replicate keeps tiny images usable
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect" if pad < min(height, width) else "replicate")
    weight = kernel.repeat_interleave(channels, dim=0).unsqueeze(1)  # (B·C)×1×k×k, grouped per channel
    out = F.conv2d(padded.reshape(1, batch * channels, *padded.shape[-2:]), weight, groups=batch * channels)
    return out.reshape(batch, channels, height, width)


def add_resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize to ``size`` = (h, w) with ``area``, ``bilinear`` or ``bicubic`` (no antialias, as in BasicSR)."""
    _check_images(images)
    if mode not in RESIZE_MODES:
        raise ParameterError(f"resize mode must be one of {RESIZE_MODES}, got '{mode}'")
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if tuple(images.shape[-2:]) == size:
        return images
    if mode == "area":
        return F.interpolate(images, size=size, mode="area")
    return F.interpolate(images, size=size, mode=mode, align_corners=False)


def add_resize_by_factor(images: torch.Tensor, factor: float, mode: str) -> torch.Tensor:
    """Resize by ``factor`` as ``F.interpolate(scale_factor=factor)`` does (OSEDiff's first stage).

    The output has ⌊h·factor⌋ × ⌊w·factor⌋ pixels, and bilinear/bicubic sample the input at (i + ½)/factor − ½: the
    grid of the exact factor, not that of the integer output size that :func:`add_resize` uses. Where a side would
    shrink to 0 pixels it keeps 1, through :func:`add_resize`.
    """
    _check_images(images)
    if mode not in RESIZE_MODES:
        raise ParameterError(f"resize mode must be one of {RESIZE_MODES}, got '{mode}'")
    if not factor > 0:
        raise ParameterError(f"resize factor must be positive, got {factor}")
    if factor == 1:
        return images
    height, width = images.shape[-2:]
    if math.floor(height * factor) < 1 or math.floor(width * factor) < 1:
        return add_resize(images, (1, 1), mode)
    if mode == "area":
        return F.interpolate(images, scale_factor=factor, mode="area")
    return F.interpolate(images, scale_factor=factor, mode=mode, align_corners=False)


def add_gaussian_noise(images: torch.Tensor, sigma: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """Add N(0, σ²) noise (σ in [0, 1] units), one field shared by the channels when ``gray``; clip to [0, 1]."""
    _check_images(images)
    batch, channels, height, width = images.shape
    shape = (batch, 1 if gray else channels, height, width)
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    noise = noise.to(device=images.device, dtype=images.dtype) * sigma
    return (images + noise).clamp(0.0, 1.0)


def _poisson_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Zero-mean shot noise of 8-bit-quantised images: Poisson(I·v)/v − I, v = 2^⌈log₂(#distinct levels)⌉.

    The number of distinct 8-bit levels stands in for the unknown photon count (Real-ESRGAN); it is counted per image
    with a histogram rather than ``torch.unique`` (same number, linear time).
    """
    levels = (images * 255.0).round().clamp(0, 255)
    quantised = levels / 255.0
    noise = torch.empty_like(images)
    for i in range(images.shape[0]):
        distinct = int(torch.bincount(levels[i].flatten().long(), minlength=256).count_nonzero())
        vals = 2.0 ** math.ceil(math.log2(max(distinct, 1)))
        rate = (quantised[i] * vals).to(device=generator.device, dtype=torch.float32)
        sample = torch.poisson(rate, generator=generator).to(device=images.device, dtype=images.dtype)
        noise[i] = sample / vals - quantised[i]
    return noise


def add_poisson_noise(
    images: torch.Tensor,
    scale: float,
    gray: bool,
    generator: torch.Generator,
    luma: Sequence[float] = BT601_LUMA,
) -> torch.Tensor:
    """Add ``scale`` × Poisson (shot) noise, computed on luma (weights ``luma``) and shared by the channels when
    ``gray``; clip."""
    _check_images(images)
    if gray:
        weights = torch.tensor(luma, device=images.device, dtype=images.dtype).reshape(1, 3, 1, 1)
        noise = _poisson_noise((images * weights).sum(dim=1, keepdim=True), generator)
    else:
        noise = _poisson_noise(images, generator)
    return (images + noise * scale).clamp(0.0, 1.0)


def add_jpeg(images: torch.Tensor, quality: int | Sequence[int]) -> torch.Tensor:
    """Compress and decompress each image with the real JPEG codec (OpenCV/libjpeg, 4:2:0) at ``quality`` 1–100."""
    _check_images(images)
    qualities = [int(quality)] * images.shape[0] if isinstance(quality, (int, float)) else [int(q) for q in quality]
    if len(qualities) != images.shape[0] or not all(1 <= q <= 100 for q in qualities):
        raise ParameterError(f"JPEG quality must be one int in [1, 100] per image, got {quality}")
    arrays = (images.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = []
    for array, q in zip(arrays, qualities):
        ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(array[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            raise InvalidInputError(f"JPEG encoding failed for an image of shape {array.shape}")
        decoded.append(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1])
    out = torch.from_numpy(np.ascontiguousarray(np.stack(decoded))).permute(0, 3, 1, 2)
    return out.to(device=images.device, dtype=images.dtype) / 255.0


def quantize_8bit(images: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 8-bit grid: round(255·x)/255 (what saving the LQ as PNG would give)."""
    return (images.clamp(0.0, 1.0) * 255.0).round() / 255.0


# --------------------------------------------------------------------------------------------------------------------
# Parameter sampling from a generator
# --------------------------------------------------------------------------------------------------------------------
def _rand(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator, device=generator.device))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * _rand(generator)


def _choice(generator: torch.Generator, options: Sequence, probs: Sequence[float] | None = None):
    if probs is None:
        probs = [1.0] * len(options)
    weights = torch.tensor(probs, dtype=torch.float64)
    cumulative = torch.cumsum(weights / weights.sum(), 0)
    index = int(torch.searchsorted(cumulative, torch.tensor([_rand(generator)], dtype=torch.float64)).item())
    return options[min(index, len(options) - 1)]


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))


def _odd_sizes(size_range: Sequence[int]) -> list[int]:
    low, high = int(size_range[0]), int(size_range[1])
    sizes = [s for s in range(low, high + 1) if s % 2 == 1]
    if not sizes:
        raise ParameterError(f"kernel size range {size_range} contains no odd size")
    return sizes


@dataclass(frozen=True)
class KernelSpec:
    """How to draw one blur kernel (first or second stage)."""

    sizes: tuple[int, int] = (7, 21)
    types: tuple[str, ...] = KERNEL_TYPES
    probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma: tuple[float, float] = (0.2, 3.0)
    rotation: tuple[float, float] = (-math.pi, math.pi)
    betag: tuple[float, float] = (0.5, 4.0)
    betap: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1


def _split_beta(generator: torch.Generator, beta_range: tuple[float, float]) -> float:
    # Real-ESRGAN draws β below 1 or above 1 with equal chance, so both shapes (peakier/flatter) are frequent.
    if _rand(generator) < 0.5:
        return _uniform(generator, beta_range[0], min(1.0, beta_range[1]))
    return _uniform(generator, max(1.0, beta_range[0]), beta_range[1])


def sample_kernel(generator: torch.Generator, spec: KernelSpec) -> tuple[str, torch.Tensor]:
    """Draw (type, kernel): a sinc kernel with ``spec.sinc_prob``, else a mixed kernel of a random family."""
    size = _choice(generator, _odd_sizes(spec.sizes))
    if _rand(generator) < spec.sinc_prob:
        # Small kernels cannot represent very low cut-offs, hence the narrower range below 13 taps (Real-ESRGAN).
        low = math.pi / 3 if size < 13 else math.pi / 5
        return "sinc", circular_lowpass_kernel(_uniform(generator, low, math.pi), size)
    kernel_type = _choice(generator, spec.types, spec.probs)
    sigma_x = _uniform(generator, *spec.sigma)
    sigma_y = _uniform(generator, *spec.sigma)
    rotation = _uniform(generator, *spec.rotation)
    beta = 1.0
    if kernel_type.startswith("generalized"):
        beta = _split_beta(generator, spec.betag)
    elif kernel_type.startswith("plateau"):
        beta = _split_beta(generator, spec.betap)
    return kernel_type, mixed_kernel(kernel_type, size, sigma_x, sigma_y, rotation, beta)


@dataclass(frozen=True)
class NoiseParams:
    """One noise draw: ``kind`` is ``"gaussian"`` (strength = σ in [0, 1] units), ``"poisson"`` (strength = scale)
    or ``"none"``."""

    kind: str
    strength: float
    gray: bool
    seed: int


def sample_noise(
    generator: torch.Generator,
    *,
    noise_prob: float = 1.0,
    gaussian_prob: float = 0.5,
    sigma_range: Sequence[float] = (1.0, 30.0),
    poisson_scale_range: Sequence[float] = (0.05, 3.0),
    gray_prob: float = 0.4,
) -> NoiseParams:
    """Gaussian with ``gaussian_prob`` (σ ~ U(sigma_range)/255), otherwise Poisson (scale ~ U(range))."""
    seed = _seed(generator)
    if _rand(generator) >= noise_prob:
        return NoiseParams("none", 0.0, False, seed)
    if _rand(generator) < gaussian_prob:
        kind, strength = "gaussian", _uniform(generator, *sigma_range) / 255.0
    else:
        kind, strength = "poisson", _uniform(generator, *poisson_scale_range)
    return NoiseParams(kind, strength, _rand(generator) < gray_prob, seed)


def apply_noise(images: torch.Tensor, noise: NoiseParams, luma: Sequence[float] = BT601_LUMA) -> torch.Tensor:
    """Apply a :class:`NoiseParams` draw; the noise field comes from its seed on the images' device. ``luma``: the
    weights of grey Poisson noise."""
    if noise.kind == "none" or noise.strength == 0:
        return images
    generator = torch.Generator(device=images.device)
    generator.manual_seed(noise.seed)
    if noise.kind == "gaussian":
        return add_gaussian_noise(images, noise.strength, noise.gray, generator)
    return add_poisson_noise(images, noise.strength, noise.gray, generator, luma)


def sample_resize_scale(
    generator: torch.Generator, probs: Sequence[float], scale_range: Sequence[float]
) -> tuple[float, str]:
    """(scale, mode): up ~ U(1, max), down ~ U(min, 1) or keep, chosen with ``probs``; mode uniform."""
    direction = _choice(generator, ("up", "down", "keep"), probs)
    if direction == "up":
        scale = _uniform(generator, 1.0, scale_range[1])
    elif direction == "down":
        scale = _uniform(generator, scale_range[0], 1.0)
    else:
        scale = 1.0
    return scale, _choice(generator, RESIZE_MODES)


def random_add_blur(images: torch.Tensor, generator: torch.Generator, spec: KernelSpec | None = None) -> torch.Tensor:
    """Blur each image with its own kernel drawn by :func:`sample_kernel`."""
    spec = spec or KernelSpec()
    kernels = [sample_kernel(generator, spec)[1] for _ in range(images.shape[0])]
    return torch.cat([add_blur(images[i : i + 1], k) for i, k in enumerate(kernels)])


def random_resize(
    images: torch.Tensor,
    generator: torch.Generator,
    probs: Sequence[float] = (0.2, 0.7, 0.1),
    scale_range: Sequence[float] = (0.15, 1.5),
) -> list[torch.Tensor]:
    """Resize each image by its own random factor and mode; returns a list (sizes differ)."""
    out = []
    for i in range(images.shape[0]):
        scale, mode = sample_resize_scale(generator, probs, scale_range)
        height, width = images.shape[-2:]
        out.append(add_resize(images[i : i + 1], (round(height * scale), round(width * scale)), mode))
    return out


def random_add_noise(images: torch.Tensor, generator: torch.Generator, **noise_kwargs) -> torch.Tensor:
    """Add Gaussian or Poisson noise per image (:func:`sample_noise` arguments)."""
    return torch.cat(
        [apply_noise(images[i : i + 1], sample_noise(generator, **noise_kwargs)) for i in range(images.shape[0])]
    )


def random_add_jpeg(
    images: torch.Tensor, generator: torch.Generator, quality_range: Sequence[float] = (30, 95)
) -> torch.Tensor:
    """JPEG each image at a quality drawn uniformly from ``quality_range`` (rounded to an integer)."""
    qualities = [round(_uniform(generator, *quality_range)) for _ in range(images.shape[0])]
    return add_jpeg(images, qualities)


# --------------------------------------------------------------------------------------------------------------------
# The composed pipeline
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DegradationParams:
    """Every random choice for one image; :meth:`RealESRGANDegradation.apply` is deterministic given this."""

    kernel1_type: str | None
    kernel1: torch.Tensor | None
    resize1: tuple[float, str]
    noise1: NoiseParams
    jpeg1: int | None
    second_order: bool
    kernel2_type: str | None
    kernel2: torch.Tensor | None
    resize2: tuple[float, str]
    noise2: NoiseParams
    jpeg2: int | None
    final_order: str
    final_mode: str
    sinc: torch.Tensor | None
    back_mode: str | None


def _pair(value: Sequence[float], name: str) -> tuple[float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 2 or values[0] > values[1]:
        raise ParameterError(f"{name} must be a [low, high] pair with low ≤ high, got {list(value)}")
    return values


def _probs(value: Sequence[float], length: int, name: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in value)
    if len(values) != length or any(v < 0 for v in values) or sum(values) <= 0:
        raise ParameterError(f"{name} must be {length} non-negative probabilities, got {list(value)}")
    return values


def _prob(value: float, name: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ParameterError(f"{name} must be a probability in [0, 1], got {value}")
    return float(value)


class RealESRGANDegradation:
    """Second-order Real-ESRGAN degradation with OSEDiff's defaults; every argument mirrors ``params_realesrgan.yml``.

    ``__call__(hq_images, generator)`` → LQ images, ``B×3×H×W`` in [0, 1], quantised to 8 bits; with ``resize_back``
    they have the HR size (downscaled by ``scale`` through the two stages, then resized back with a random mode),
    otherwise ``H/scale × W/scale``. Probabilities added beyond OSEDiff (``blur_prob``, ``noise_prob``, ``jpeg_prob``
    and their second-stage twins, ``second_order_prob`` from ResShift) default to OSEDiff's behaviour; setting them to
    0 with ``scale=1`` gives the identity on 8-bit images (the ``none`` preset).

    The engine arguments choose how the sampled parameters are applied (module docstring): ``jpeg_codec``
    (``"libjpeg"`` or ``"diff_jpeg"``), ``jpeg_transpose_tables`` (diff_jpeg only), ``resize_grid`` (``"rounded"`` or
    ``"scale_factor"``), ``gray_noise_luma`` (RGB weights of grey Poisson noise) and ``quantize_before_resize_back``.
    They never change what :meth:`sample_params` draws, so two engines can degrade with the very same parameters.
    """

    def __init__(
        self,
        scale: float = 4,
        resize_back: bool = True,
        # kernels (first stage, second stage, final sinc)
        kernel_range: Sequence[int] = (7, 21),
        kernel_list: Sequence[str] = KERNEL_TYPES,
        kernel_prob: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob: float = 0.1,
        blur_sigma: Sequence[float] = (0.2, 3.0),
        betag_range: Sequence[float] = (0.5, 4.0),
        betap_range: Sequence[float] = (1.0, 2.0),
        kernel_list2: Sequence[str] = KERNEL_TYPES,
        kernel_prob2: Sequence[float] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        sinc_prob2: float = 0.1,
        blur_sigma2: Sequence[float] = (0.2, 1.5),
        betag_range2: Sequence[float] = (0.5, 4.0),
        betap_range2: Sequence[float] = (1.0, 2.0),
        final_sinc_prob: float = 0.8,
        # first stage
        blur_prob: float = 1.0,
        resize_prob: Sequence[float] = (0.2, 0.7, 0.1),
        resize_range: Sequence[float] = (0.15, 1.5),
        noise_prob: float = 1.0,
        gaussian_noise_prob: float = 0.5,
        noise_range: Sequence[float] = (1.0, 30.0),
        poisson_scale_range: Sequence[float] = (0.05, 3.0),
        gray_noise_prob: float = 0.4,
        jpeg_prob: float = 1.0,
        jpeg_range: Sequence[float] = (30, 95),
        # second stage
        second_order_prob: float = 1.0,
        second_blur_prob: float = 0.8,
        resize_prob2: Sequence[float] = (0.3, 0.4, 0.3),
        resize_range2: Sequence[float] = (0.3, 1.2),
        noise_prob2: float = 1.0,
        gaussian_noise_prob2: float = 0.5,
        noise_range2: Sequence[float] = (1.0, 25.0),
        poisson_scale_range2: Sequence[float] = (0.05, 2.5),
        gray_noise_prob2: float = 0.4,
        jpeg_prob2: float = 1.0,
        jpeg_range2: Sequence[float] = (30, 95),
        final_jpeg_first_prob: float = 0.5,
        # engines: ours by default; the osediff preset selects OSEDiff's (diff_jpeg, scale_factor, torchvision luma)
        jpeg_codec: str = "libjpeg",
        jpeg_transpose_tables: bool = False,
        resize_grid: str = "rounded",
        gray_noise_luma: Sequence[float] = BT601_LUMA,
        quantize_before_resize_back: bool = True,
    ) -> None:
        if not float(scale) >= 1:
            raise ParameterError(f"degradation scale must be ≥ 1, got {scale}")
        self.scale = float(scale)
        self.resize_back = bool(resize_back)
        self.kernel1 = self._kernel_spec(
            kernel_range, kernel_list, kernel_prob, blur_sigma, betag_range, betap_range, sinc_prob, ""
        )
        self.kernel2 = self._kernel_spec(
            kernel_range, kernel_list2, kernel_prob2, blur_sigma2, betag_range2, betap_range2, sinc_prob2, "2"
        )
        self.final_sinc_prob = _prob(final_sinc_prob, "final_sinc_prob")
        self.blur_prob = _prob(blur_prob, "blur_prob")
        self.resize_prob = _probs(resize_prob, 3, "resize_prob")
        self.resize_range = _pair(resize_range, "resize_range")
        self.noise1 = self._noise_kwargs(
            noise_prob, gaussian_noise_prob, noise_range, poisson_scale_range, gray_noise_prob, ""
        )
        self.jpeg_prob = _prob(jpeg_prob, "jpeg_prob")
        self.jpeg_range = _pair(jpeg_range, "jpeg_range")
        self.second_order_prob = _prob(second_order_prob, "second_order_prob")
        self.second_blur_prob = _prob(second_blur_prob, "second_blur_prob")
        self.resize_prob2 = _probs(resize_prob2, 3, "resize_prob2")
        self.resize_range2 = _pair(resize_range2, "resize_range2")
        self.noise2 = self._noise_kwargs(
            noise_prob2, gaussian_noise_prob2, noise_range2, poisson_scale_range2, gray_noise_prob2, "2"
        )
        self.jpeg_prob2 = _prob(jpeg_prob2, "jpeg_prob2")
        self.jpeg_range2 = _pair(jpeg_range2, "jpeg_range2")
        self.final_jpeg_first_prob = _prob(final_jpeg_first_prob, "final_jpeg_first_prob")
        for name, (low, high) in (("jpeg_range", self.jpeg_range), ("jpeg_range2", self.jpeg_range2)):
            if low < 1 or high > 100:
                raise ParameterError(f"{name} must lie in [1, 100], got [{low}, {high}]")
        self._kernel_sizes = _odd_sizes(self.kernel1.sizes)
        if jpeg_codec not in JPEG_CODECS:
            raise ParameterError(f"jpeg_codec must be one of {JPEG_CODECS}, got '{jpeg_codec}'")
        if jpeg_transpose_tables and jpeg_codec != "diff_jpeg":
            raise ParameterError("jpeg_transpose_tables applies to jpeg_codec=diff_jpeg only (libjpeg sets its own)")
        if resize_grid not in RESIZE_GRIDS:
            raise ParameterError(f"resize_grid must be one of {RESIZE_GRIDS}, got '{resize_grid}'")
        luma = tuple(float(w) for w in gray_noise_luma)
        if len(luma) != 3 or any(w < 0 for w in luma) or not 0.99 <= sum(luma) <= 1.01:
            raise ParameterError(f"gray_noise_luma must be 3 non-negative RGB weights summing to 1, got {luma}")
        self.jpeg_codec = jpeg_codec
        self.jpeg_transpose_tables = bool(jpeg_transpose_tables)
        self.resize_grid = resize_grid
        self.gray_noise_luma = luma
        self.quantize_before_resize_back = bool(quantize_before_resize_back)

    @staticmethod
    def _kernel_spec(sizes, types, probs, sigma, betag, betap, sinc_prob, suffix: str) -> KernelSpec:
        types = tuple(str(t) for t in types)
        unknown = [t for t in types if t not in KERNEL_TYPES]
        if unknown:
            raise ParameterError(
                f"kernel_list{suffix}: unknown kernel types {unknown}; expected some of {KERNEL_TYPES}"
            )
        low_size, high_size = (int(s) for s in _pair(sizes, "kernel_range"))
        _odd_sizes((low_size, high_size))
        sigma = _pair(sigma, f"blur_sigma{suffix}")
        if sigma[0] <= 0:
            raise ParameterError(f"blur_sigma{suffix} must be positive, got {list(sigma)}")
        return KernelSpec(
            sizes=(low_size, high_size),
            types=types,
            probs=_probs(probs, len(types), f"kernel_prob{suffix}"),
            sigma=sigma,
            betag=_pair(betag, f"betag_range{suffix}"),
            betap=_pair(betap, f"betap_range{suffix}"),
            sinc_prob=_prob(sinc_prob, f"sinc_prob{suffix}"),
        )

    @staticmethod
    def _noise_kwargs(noise_prob, gaussian_prob, sigma_range, poisson_range, gray_prob, suffix: str) -> dict:
        sigma = _pair(sigma_range, f"noise_range{suffix}")
        poisson = _pair(poisson_range, f"poisson_scale_range{suffix}")
        if sigma[0] < 0 or poisson[0] < 0:
            raise ParameterError(f"noise strengths must be ≥ 0, got noise_range{suffix}={list(sigma)}")
        return {
            "noise_prob": _prob(noise_prob, f"noise_prob{suffix}"),
            "gaussian_prob": _prob(gaussian_prob, f"gaussian_noise_prob{suffix}"),
            "sigma_range": sigma,
            "poisson_scale_range": poisson,
            "gray_prob": _prob(gray_prob, f"gray_noise_prob{suffix}"),
        }

    # ----------------------------------------------------------------------------------------------------------------
    def sample_params(self, generator: torch.Generator) -> DegradationParams:
        """Draw every random choice for one image, in a fixed order (the same generator state → the same params)."""
        g = generator
        kernel1_type, kernel1 = sample_kernel(g, self.kernel1) if _rand(g) < self.blur_prob else (None, None)
        resize1 = sample_resize_scale(g, self.resize_prob, self.resize_range)
        noise1 = sample_noise(g, **self.noise1)
        jpeg1 = round(_uniform(g, *self.jpeg_range)) if _rand(g) < self.jpeg_prob else None
        second_order = _rand(g) < self.second_order_prob
        kernel2_type, kernel2 = sample_kernel(g, self.kernel2) if _rand(g) < self.second_blur_prob else (None, None)
        resize2 = sample_resize_scale(g, self.resize_prob2, self.resize_range2)
        noise2 = sample_noise(g, **self.noise2)
        jpeg2 = round(_uniform(g, *self.jpeg_range2)) if _rand(g) < self.jpeg_prob2 else None
        final_order = FINAL_ORDERS[1] if _rand(g) < self.final_jpeg_first_prob else FINAL_ORDERS[0]
        final_mode = _choice(g, RESIZE_MODES)
        sinc = None
        if _rand(g) < self.final_sinc_prob:
            sinc = circular_lowpass_kernel(_uniform(g, math.pi / 3, math.pi), _choice(g, self._kernel_sizes))
        back_mode = _choice(g, RESIZE_MODES) if self.resize_back else None
        return DegradationParams(
            kernel1_type, kernel1, resize1, noise1, jpeg1, second_order, kernel2_type, kernel2, resize2, noise2,
            jpeg2, final_order, final_mode, sinc, back_mode,
        )  # fmt: skip

    def apply(self, hq_image: torch.Tensor, params: DegradationParams) -> torch.Tensor:
        """Degrade one ``1×3×H×W`` image with fixed parameters (deterministic)."""
        _check_images(hq_image)
        if hq_image.shape[0] != 1:
            raise InvalidInputError(f"apply() takes one image (1×3×H×W), got batch {hq_image.shape[0]}")
        height, width = hq_image.shape[-2:]
        by_factor = self.resize_grid == "scale_factor"
        # OSEDiff's final size is ori_h // scale; ours rounds, so H/s need not be an integer.
        size = math.floor if by_factor else round
        lr_size = (size(height / self.scale), size(width / self.scale))
        out = hq_image
        # First order: blur → resize → noise → JPEG.
        if params.kernel1 is not None:
            out = add_blur(out, params.kernel1)
        scale, mode = params.resize1
        if by_factor:
            out = add_resize_by_factor(out, scale, mode)
        else:
            out = add_resize(out, (round(out.shape[-2] * scale), round(out.shape[-1] * scale)), mode)
        out = apply_noise(out, params.noise1, self.gray_noise_luma)
        if params.jpeg1 is not None:
            out = self._jpeg(out.clamp(0, 1), params.jpeg1)
        # Second order (skipped with 1 − second_order_prob, as ResShift does); the 1/scale of the final size is
        # folded into this resize, which is relative to the HR size (OSEDiff truncates it: int(H / s · r2)).
        if params.second_order:
            if params.kernel2 is not None:
                out = add_blur(out, params.kernel2)
            scale, mode = params.resize2
            if by_factor:
                size2 = (int(height / self.scale * scale), int(width / self.scale * scale))
            else:
                size2 = (round(lr_size[0] * scale), round(lr_size[1] * scale))
            out = add_resize(out, size2, mode)
            out = apply_noise(out, params.noise2, self.gray_noise_luma)
        # Final stage: either order of (resize + sinc) and JPEG; other orders give "twisted lines" (Real-ESRGAN).
        if params.final_order == "resize_sinc_jpeg":
            out = add_resize(out, lr_size, params.final_mode)
            if params.sinc is not None:
                out = add_blur(out, params.sinc)
            if params.jpeg2 is not None:
                out = self._jpeg(out.clamp(0, 1), params.jpeg2)
        else:
            if params.jpeg2 is not None:
                out = self._jpeg(out.clamp(0, 1), params.jpeg2)
            out = add_resize(out, lr_size, params.final_mode)
            if params.sinc is not None:
                out = add_blur(out, params.sinc)
        if params.back_mode is not None:
            # Ours stores the LR image at 8 bits first, as a saved LQ file would be; OSEDiff rounds only at the end.
            if self.quantize_before_resize_back:
                out = quantize_8bit(out)
            out = add_resize(out, (height, width), params.back_mode)
        return quantize_8bit(out)

    def _jpeg(self, images: torch.Tensor, quality: int) -> torch.Tensor:
        if self.jpeg_codec == "diff_jpeg":
            return diff_jpeg(images, quality, transpose_tables=self.jpeg_transpose_tables)
        return add_jpeg(images, quality)

    def __call__(self, hq_images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Degrade ``B×3×H×W`` HQ images in [0, 1]; image i uses the generator after images 0..i−1."""
        _check_images(hq_images)
        if not torch.isfinite(hq_images).all():
            raise InvalidInputError("HQ images contain NaN or Inf")
        return torch.cat(
            [self.apply(hq_images[i : i + 1], self.sample_params(generator)) for i in range(len(hq_images))]
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(scale={self.scale:g}, resize_back={self.resize_back}, "
            f"jpeg_codec={self.jpeg_codec}, resize_grid={self.resize_grid})"
        )
