"""Colour correction of the network output against the (upsampled) input, as in StableSR/OSEDiff/MagicBokeh.

One-step diffusion drifts in colour (over-saturated lips and eyes, global tints: OSEDiff #16/#49). Three choices,
none perfect (SeeSR #54), so the method is a config switch:

* ``adain`` (official default): per channel, match the output's mean and standard deviation to the input's,
  ``out' = (out − μ_out) / σ_out · σ_in + μ_in`` with σ = sqrt(var + 1e-5) over the whole image.
* ``wavelet``: keep the output's high frequencies and take the input's low frequencies,
  ``out' = high(out) + low(in)``, where ``low`` is five passes of a 3×3 binomial blur dilated by 1, 2, 4, 8, 16
  (à trous) and ``high = x − low``. Local, so it also fixes tints that vary across the image, but it can bleed input
  colours across edges (S3Diff #2).
* ``none``.

``release_color_fix`` is the release's own sequence (``preset=release``): the stitched output is truncated to 8 bits,
AdaIN runs on that 8-bit image with the element-wise formula ``((out − μ_out)/σ_out)·σ_in + μ_in``, and the result
is clamped and truncated to 8 bits again (its ``ToPILImage`` conversions). Truncation, not rounding, makes the
output ≈ 0.5 levels darker than a float pipeline's; the two truncations are kept to reproduce its files.

Both work on ``1×3×H×W`` CPU tensors of any size in horizontal bands, so memory stays a few bands beyond the image
itself: AdaIN accumulates its statistics band by band (float64), the wavelet fix gets a halo of 31 rows (the sum of
the dilations) around each band, which makes the banded result identical to the whole-image one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from magicbokeh.errors import InvalidInputError, ParameterError

COLOR_FIX_METHODS = ("adain", "wavelet", "none")
_ADAIN_EPS = 1e-5
_WAVELET_LEVELS = 5
_WAVELET_HALO = sum(2**level for level in range(_WAVELET_LEVELS))  # 31 rows of context per side
_BAND_ROWS = 512


def _channel_stats(images: torch.Tensor, band_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and sqrt(var + eps) of ``1×C×H×W``, accumulated in float64 band by band."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for top in range(0, images.shape[-2], band_rows):
        band = images[0, :, top : top + band_rows].to(torch.float64).flatten(1)
        total += band.sum(1)
        total_sq += band.square().sum(1)
    count = images.shape[-2] * images.shape[-1]
    mean = total / count
    # Unbiased variance, as torch.var (what the reference AdaIN uses).
    var = ((total_sq - count * mean.square()) / max(count - 1, 1)).clamp_min(0)
    return mean, (var + _ADAIN_EPS).sqrt()


def adain_color_fix(
    output: torch.Tensor, reference: torch.Tensor, band_rows: int = _BAND_ROWS, inplace: bool = False
) -> torch.Tensor:
    """AdaIN colour fix (module docstring), clamped; ``inplace`` overwrites a float32 ``output`` band by band."""
    out_mean, out_std = _channel_stats(output, band_rows)
    ref_mean, ref_std = _channel_stats(reference, band_rows)
    gain = (ref_std / out_std).to(torch.float32).view(1, -1, 1, 1)
    bias = (ref_mean - out_mean * ref_std / out_std).to(torch.float32).view(1, -1, 1, 1)
    fixed = output if inplace and output.dtype == torch.float32 else torch.empty_like(output, dtype=torch.float32)
    for top in range(0, output.shape[-2], band_rows):
        band = output[..., top : top + band_rows, :].float()
        fixed[..., top : top + band_rows, :] = (band * gain + bias).clamp_(0.0, 1.0)
    return fixed


def truncate_8bit(images: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``floor(255·x)/255``: the 8-bit levels a ``uint8`` cast of ``255·x`` keeps (x ≥ 0), as float32."""
    scaled = images.mul_(255.0) if inplace else images.float() * 255.0
    return scaled.floor_().div_(255.0)


def release_color_fix(
    output: torch.Tensor, reference: torch.Tensor, band_rows: int = _BAND_ROWS, inplace: bool = False
) -> torch.Tensor:
    """The release's colour step (module docstring) on ``1×3×H×W`` float32 in [0, 1]; returns 8-bit levels."""
    quantized = truncate_8bit(output, inplace=inplace and output.dtype == torch.float32)
    out_mean, out_std = (v.to(torch.float32).view(1, -1, 1, 1) for v in _channel_stats(quantized, band_rows))
    ref_mean, ref_std = (v.to(torch.float32).view(1, -1, 1, 1) for v in _channel_stats(reference, band_rows))
    for top in range(0, quantized.shape[-2], band_rows):
        band = quantized[..., top : top + band_rows, :]
        fixed = ((band - out_mean) / out_std * ref_std + ref_mean).clamp_(0.0, 1.0)
        band.copy_(truncate_8bit(fixed, inplace=True))
    return quantized


def _low_frequency(images: torch.Tensor) -> torch.Tensor:
    """Five à-trous passes of the 3×3 binomial kernel [1 2 1]ᵀ[1 2 1]/16, dilation 2^level, replicate padding."""
    kernel_1d = torch.tensor([1.0, 2.0, 1.0], dtype=images.dtype) / 4.0
    kernel = (kernel_1d[:, None] * kernel_1d[None, :]).expand(images.shape[1], 1, 3, 3)
    low = images
    for level in range(_WAVELET_LEVELS):
        dilation = 2**level
        padded = F.pad(low, (dilation,) * 4, mode="replicate")
        low = F.conv2d(padded, kernel, dilation=dilation, groups=images.shape[1])
    return low


def wavelet_color_fix(output: torch.Tensor, reference: torch.Tensor, band_rows: int = _BAND_ROWS) -> torch.Tensor:
    """Wavelet colour fix ``high(out) + low(in)`` (module docstring); returns a new clamped tensor (a band's halo
    reads rows of its neighbours, so it cannot overwrite its input)."""
    height = output.shape[-2]
    fixed = torch.empty_like(output, dtype=torch.float32)
    for top in range(0, height, band_rows):
        bottom = min(top + band_rows, height)
        # A halo of real rows around the band: errors from the band's artificial replicate border travel at most
        # _WAVELET_HALO rows inwards, so the kept rows equal the whole-image computation.
        lo, hi = max(top - _WAVELET_HALO, 0), min(bottom + _WAVELET_HALO, height)
        out_band = output[..., lo:hi, :].float()
        ref_band = reference[..., lo:hi, :].float()
        result = out_band - _low_frequency(out_band) + _low_frequency(ref_band)
        fixed[..., top:bottom, :] = result[..., top - lo : bottom - lo, :].clamp_(0.0, 1.0)
    return fixed


def color_fix(
    output: torch.Tensor, reference: torch.Tensor, method: str = "adain", inplace: bool = False
) -> torch.Tensor:
    """Apply the named colour fix to ``1×3×H×W`` (or ``B×…``, image by image) ``output`` against ``reference``.

    ``inplace`` lets AdaIN reuse ``output``'s memory (the wavelet fix always allocates a new tensor).
    """
    if method not in COLOR_FIX_METHODS:
        raise ParameterError(f"color_fix must be one of {COLOR_FIX_METHODS}, got {method!r}")
    if output.shape != reference.shape or output.ndim != 4:
        raise InvalidInputError(
            f"colour fix needs B×C×H×W output and reference of equal shape; got {tuple(output.shape)} and "
            f"{tuple(reference.shape)}"
        )
    if method == "none":
        return output
    fixed = [
        adain_color_fix(output[i : i + 1], reference[i : i + 1], inplace=inplace)
        if method == "adain"
        else wavelet_color_fix(output[i : i + 1], reference[i : i + 1])
        for i in range(len(output))
    ]
    return fixed[0] if len(fixed) == 1 else torch.cat(fixed)  # no copy for the usual single image
