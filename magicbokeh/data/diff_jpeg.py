"""A differentiable JPEG, written from the JPEG standard, in the variant OSEDiff trains with.

``diff_jpeg(images, quality)`` compresses and decompresses ``B×3×H×W`` images in [0, 1] with tensor operations
only, so it runs on any device and gradients reach the input. The steps are baseline JPEG's (ITU-T T.81 and the JFIF
colour space of ITU-T T.871):

1. zero-pad the bottom and right to a multiple of 16 pixels (one 4:2:0 minimum coded unit);
2. RGB → full-range YCbCr (T.871 §7);
3. 4:2:0 chroma subsampling: each chroma sample is the mean of a 2×2 block;
4. level shift by −128 and the 8×8 two-dimensional DCT-II of every block (T.81 A.3.3);
5. quantisation ``round(F / Q)`` with the example tables of T.81 Annex K (K.1 luminance, K.2 chrominance) scaled by
   the quality (below), then dequantisation ``F' = round(F / Q) · Q``;
6. inverse DCT and level shift by +128;
7. chroma upsampling by repetition (each chroma sample fills its 2×2 block);
8. YCbCr → RGB, clamp to [0, 255], crop back to H×W.

Rounding is the only non-differentiable step; it rounds exactly in the forward pass and passes the gradient through
unchanged (a straight-through estimator), so the forward result is that of the plain, non-differentiable codec.

Where this differs from a real codec (libjpeg, which ``degradations.add_jpeg`` calls through OpenCV) and why it
degrades harder:

* **table scaling** (:func:`quality_to_table_scale`): the factor s = 50/q below quality 50 and 2 − q/50 from 50 up
  multiplies the float tables directly; libjpeg rounds s·Q to integers and clamps them to [1, 255]. At quality 100
  s = 0 and quantisation is skipped (what remains is the chroma subsampling);
* **chroma upsampling by repetition**, where libjpeg decodes with its smoother "fancy" (triangular) upsampling;
* **zero padding** to 16, where libjpeg repeats the edge pixels: the black padding shares DCT blocks with the
  image's last rows and columns, and its quantisation error leaks into them, so sizes that are not multiples of 16
  lose more;
* the input and output are not rounded to 8 bits and the DCT is computed in floating point.

``transpose_tables=True`` reproduces one more property of the DiffJPEG in BasicSR that OSEDiff uses: it divides the
coefficient of vertical frequency u and horizontal frequency v by the standard table's entry (v, u) rather than
(u, v). The chrominance table is symmetric, so only luminance is affected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from magicbokeh.errors import InvalidInputError, ParameterError

BLOCK = 8
MCU = 16  # a 4:2:0 minimum coded unit: 16×16 luma pixels, one 8×8 block of each chroma channel

# ITU-T T.81 Annex K, tables K.1 and K.2: row = vertical frequency, column = horizontal frequency.
LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8 for _ in range(4)),
)

# Full-range YCbCr of JFIF (T.871 §7): Y = 0.299 R + 0.587 G + 0.114 B, Cb and Cr centred on 128.
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_YCBCR_TO_RGB = (
    (1.0, 0.0, 1.402),
    (1.0, -0.344136, -0.714136),
    (1.0, 1.772, 0.0),
)


class _RoundStraightThrough(torch.autograd.Function):
    """round(x) forward, identity backward: the exact codec's output with a usable gradient."""

    @staticmethod
    def forward(ctx, values: torch.Tensor) -> torch.Tensor:
        return torch.round(values)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


def quality_to_table_scale(quality: float | torch.Tensor) -> float | torch.Tensor:
    """The factor that multiplies the standard tables at ``quality`` ∈ (0, 100]: 50/q for q < 50, 2 − q/50 from 50.

    It is libjpeg's percentage scaling (5000/q or 200 − 2q, over 100) without rounding the scaled entries, as the
    DiffJPEG of BasicSR (and so OSEDiff) applies it; quality 50 gives the tables themselves, 100 gives 0.
    """
    if isinstance(quality, torch.Tensor):
        return torch.where(quality < 50, 50.0 / quality, 2.0 - quality / 50.0)
    return 50.0 / quality if quality < 50 else 2.0 - quality / 50.0


def dct_matrix(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The 8×8 orthonormal DCT-II matrix C, C[u, x] = α(u)/2 · cos((2x + 1)uπ/16), α(0) = 1/√2, else 1.

    T.81's forward DCT of a block f is then C f Cᵀ (its ¼·C(u)C(v) normalisation) and the inverse Cᵀ F C.
    """
    frequency = torch.arange(BLOCK, dtype=torch.float64)[:, None]
    position = torch.arange(BLOCK, dtype=torch.float64)[None, :]
    matrix = torch.cos((2 * position + 1) * frequency * math.pi / (2 * BLOCK)) / 2
    matrix[0] /= math.sqrt(2)
    return matrix.to(device=device, dtype=dtype)


def quantisation_tables(
    quality: float | torch.Tensor, *, transpose_tables: bool = False, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(luminance, chrominance) quantiser steps at ``quality``: the Annex K tables × :func:`quality_to_table_scale`.

    A tensor of B qualities gives ``B×8×8`` tables, a number ``8×8`` ones.
    """
    scale = quality_to_table_scale(quality)
    luminance = torch.tensor(LUMINANCE_TABLE, dtype=dtype)
    chrominance = torch.tensor(CHROMINANCE_TABLE, dtype=dtype)
    if transpose_tables:
        luminance, chrominance = luminance.T, chrominance.T
    if isinstance(scale, torch.Tensor):
        scale = scale.to(dtype).reshape(-1, 1, 1)
        luminance, chrominance = luminance.to(scale.device), chrominance.to(scale.device)
    return luminance * scale, chrominance * scale


def _qualities(quality: float | Sequence[float] | torch.Tensor, batch: int) -> torch.Tensor:
    values = torch.as_tensor(quality, dtype=torch.float64).flatten()
    if values.numel() == 1:
        values = values.expand(batch)
    if values.numel() != batch or not bool(((values > 0) & (values <= 100)).all()):
        raise ParameterError(f"JPEG quality must be one number in (0, 100] or one per image, got {quality}")
    return values


def _quantise_blocks(channel: torch.Tensor, steps: torch.Tensor, dct: torch.Tensor) -> torch.Tensor:
    """DCT → quantise/dequantise → inverse DCT of every 8×8 block of ``B×H×W`` (level-shifted) samples.

    ``steps`` is ``B×8×8``; a zero step (quality 100) keeps the coefficient as it is.
    """
    batch, height, width = channel.shape
    blocks = channel.reshape(batch, height // BLOCK, BLOCK, width // BLOCK, BLOCK)
    # coefficients[b, i, u, j, v]: block (i, j), vertical frequency u, horizontal frequency v
    coefficients = torch.einsum("ux,bixjy,vy->biujv", dct, blocks, dct)
    steps = steps[:, None, :, None, :]
    safe_steps = torch.where(steps > 0, steps, torch.ones_like(steps))
    quantised = _RoundStraightThrough.apply(coefficients / safe_steps) * safe_steps
    coefficients = torch.where(steps > 0, quantised, coefficients)
    blocks = torch.einsum("ux,biujv,vy->bixjy", dct, coefficients, dct)
    return blocks.reshape(batch, height, width)


def diff_jpeg(
    images: torch.Tensor,
    quality: float | Sequence[float] | torch.Tensor,
    *,
    transpose_tables: bool = False,
) -> torch.Tensor:
    """Compress and decompress ``B×3×H×W`` images in [0, 1] at ``quality`` (one number, or one per image).

    Differentiable in ``images``; the output is in [0, 1], not rounded to 8 bits. See the module docstring for the
    steps and for how it differs from libjpeg.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidInputError(f"images must be a B×3×H×W tensor in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise InvalidInputError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    batch, _, height, width = images.shape
    dtype = images.dtype
    steps = quantisation_tables(_qualities(quality, batch), transpose_tables=transpose_tables, dtype=dtype)
    luminance_steps, chrominance_steps = (table.to(images.device) for table in steps)
    dct = dct_matrix(dtype, images.device)

    padded = F.pad(images, (0, -width % MCU, 0, -height % MCU), value=0.0) * 255.0
    to_ycbcr = torch.tensor(_RGB_TO_YCBCR, dtype=dtype, device=images.device)
    # Cb and Cr stay centred on 0 throughout: their +128 offset (T.871) and the −128 level shift before the DCT
    # cancel, as do the +128 after the inverse DCT and the −128 of the conversion back to RGB.
    ycbcr = torch.einsum("kc,bchw->bkhw", to_ycbcr, padded)
    luma = ycbcr[:, 0] - 128.0
    chroma = F.avg_pool2d(ycbcr[:, 1:], kernel_size=2)  # 4:2:0: the mean of each 2×2 block

    luma = _quantise_blocks(luma, luminance_steps, dct) + 128.0
    chroma = torch.stack([_quantise_blocks(chroma[:, c], chrominance_steps, dct) for c in range(2)], dim=1)
    chroma = chroma.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)

    ycbcr = torch.cat([luma[:, None], chroma], dim=1)
    to_rgb = torch.tensor(_YCBCR_TO_RGB, dtype=dtype, device=images.device)
    rgb = torch.einsum("kc,bchw->bkhw", to_rgb, ycbcr)
    return rgb.clamp(0.0, 255.0)[..., :height, :width] / 255.0
