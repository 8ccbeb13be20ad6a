"""The differentiable JPEG: the standard's steps (tables, scaling, DCT, 4:2:0 by repetition, padding to 16), its
gradient, and how far it sits from the real codec (libjpeg through OpenCV)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from magicbokeh.data.degradations import add_jpeg, quantize_8bit
from magicbokeh.data.diff_jpeg import (
    CHROMINANCE_TABLE,
    LUMINANCE_TABLE,
    dct_matrix,
    diff_jpeg,
    quality_to_table_scale,
    quantisation_tables,
)
from magicbokeh.data.io import read_image
from magicbokeh.errors import InvalidInputError, ParameterError

PHOTO = Path(__file__).resolve().parents[2] / "data" / "samples" / "photos" / "astronaut.jpg"


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10 * math.log10(float(((a - b) ** 2).mean()))


def _ycbcr(images: torch.Tensor) -> torch.Tensor:
    """Full-range YCbCr (JFIF) in 8-bit units, Cb/Cr centred on 0, written out independently of the module."""
    r, g, b = (images[:, i] * 255 for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    return torch.stack([y, cb, cr], dim=1)


def _photo(height: int, width: int) -> torch.Tensor:
    return read_image(PHOTO)[None, :, 40 : 40 + height, 40 : 40 + width].contiguous()


# -- the quality → table scaling ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("quality", "scale"), [(10, 5.0), (25, 2.0), (40, 1.25), (50, 1.0), (75, 0.5), (95, 0.1), (100, 0.0)]
)
def test_quality_scales_the_tables_by_50_over_q_below_50_and_2_minus_q_over_50_above(quality, scale):
    assert quality_to_table_scale(quality) == pytest.approx(scale)
    assert float(quality_to_table_scale(torch.tensor(float(quality)))) == pytest.approx(scale)
    luminance, chrominance = quantisation_tables(quality)
    # the float tables themselves, not libjpeg's integers clamped to [1, 255]
    assert torch.allclose(luminance, torch.tensor(LUMINANCE_TABLE, dtype=torch.float32) * scale)
    assert torch.allclose(chrominance, torch.tensor(CHROMINANCE_TABLE, dtype=torch.float32) * scale)


def test_per_image_qualities_give_per_image_tables():
    luminance, _ = quantisation_tables(torch.tensor([25.0, 75.0]))
    assert luminance.shape == (2, 8, 8)
    assert float(luminance[0, 0, 0]) == pytest.approx(32.0) and float(luminance[1, 0, 0]) == pytest.approx(8.0)


def test_dct_matrix_is_orthonormal_with_the_standard_normalisation():
    dct = dct_matrix(torch.float64)
    assert torch.allclose(dct @ dct.T, torch.eye(8, dtype=torch.float64), atol=1e-12)
    assert float(dct[0, 3]) == pytest.approx(1 / (2 * math.sqrt(2)))  # α(0)/2 = 1/(2√2): the DC is 8× the block mean
    assert float(dct[2, 1]) == pytest.approx(math.cos(3 * 2 * math.pi / 16) / 2)


# -- quantisation follows the standard's tables (row = vertical frequency) --------------------------------------------
def _horizontal_cosine(amplitude: float) -> torch.Tensor:
    """A grey 16×16 image: 128 + amplitude × the DCT basis of horizontal frequency 7 in every block (pure luma)."""
    basis = torch.outer(dct_matrix(torch.float64)[0], dct_matrix(torch.float64)[7])  # vertical 0, horizontal 7
    plane = 128 + amplitude * basis.repeat(2, 2)
    return (plane / 255).float().expand(1, 3, 16, 16).contiguous()


def _coefficient_h7(images: torch.Tensor) -> float:
    """Mean over the four blocks of the (vertical 0, horizontal 7) DCT coefficient of the luma."""
    basis = torch.outer(dct_matrix(torch.float64)[0], dct_matrix(torch.float64)[7])
    luma = _ycbcr(images.double())[0, 0] - 128
    blocks = luma.reshape(2, 8, 2, 8).permute(0, 2, 1, 3)
    return float((blocks * basis).sum(dim=(-2, -1)).mean())


def test_a_horizontal_frequency_is_quantised_with_the_standards_row_and_libjpeg_agrees():
    # At quality 50 the step of (vertical 0, horizontal 7) is K.1[0][7] = 61; its transpose K.1[7][0] is 72.
    image = _horizontal_cosine(100.0)
    assert _coefficient_h7(image) == pytest.approx(100.0, abs=1e-3)
    assert _coefficient_h7(diff_jpeg(image, 50)) == pytest.approx(2 * 61, abs=0.05)  # round(100/61) = 2
    assert _coefficient_h7(diff_jpeg(image, 50, transpose_tables=True)) == pytest.approx(72, abs=0.05)  # round(100/72)
    # the real codec uses the same table the same way round (its integer DCT and 8-bit rounding cost ~1)
    assert _coefficient_h7(add_jpeg(quantize_8bit(image), 50)) == pytest.approx(2 * 61, abs=2.0)


# -- chroma: 4:2:0 by 2×2 means, upsampled by repetition; quality 100 keeps everything else ---------------------------
def test_quality_100_is_lossless_when_chroma_is_constant_on_2x2_blocks():
    half = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    image = half.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # 24×20: padding to 32 included
    assert torch.allclose(diff_jpeg(image, 100), image, atol=2e-5)


def test_quality_100_only_subsamples_chroma_and_the_loss_grows_as_quality_drops():
    image = _photo(64, 64)
    out = diff_jpeg(image, 100)
    unclipped = ((out > 0) & (out < 1)).all(dim=1)  # where averaging chroma pushes RGB out of range, clamping moves Y
    assert unclipped.float().mean() > 0.9
    assert torch.allclose(_ycbcr(out)[:, 0][unclipped], _ycbcr(image)[:, 0][unclipped], atol=2e-3)  # luma untouched
    errors = [float((diff_jpeg(image, q) - image).abs().mean()) for q in (100, 95, 75, 50, 20)]
    assert errors == sorted(errors) and errors[0] < errors[1]


def test_chroma_is_upsampled_by_repetition_of_the_2x2_block_mean():
    image = _photo(32, 48)
    chroma_out = _ycbcr(diff_jpeg(image, 100))[:, 1:]
    chroma_in = _ycbcr(image)[:, 1:]
    block_mean = F.avg_pool2d(chroma_in, 2)
    assert torch.allclose(chroma_out, block_mean.repeat_interleave(2, -2).repeat_interleave(2, -1), atol=2e-3)


# -- padding --------------------------------------------------------------------------------------------------------
def test_an_odd_size_is_zero_padded_to_16_and_cropped_back():
    image = _photo(37, 21)
    out = diff_jpeg(image, 60)
    assert out.shape == image.shape
    zero_padded = diff_jpeg(F.pad(image, (0, 32 - 21, 0, 48 - 37), value=0.0), 60)[..., :37, :21]
    assert torch.allclose(out, zero_padded, atol=1e-6)
    edge_padded = diff_jpeg(F.pad(image, (0, 32 - 21, 0, 48 - 37), mode="replicate"), 60)[..., :37, :21]
    assert float((out - edge_padded).abs().max()) > 5 / 255  # the black padding's error leaks into the image


# -- gradient ---------------------------------------------------------------------------------------------------------
def test_gradients_flow_are_finite_and_pass_the_rounding_straight_through():
    image = _photo(24, 40).clamp(0.05, 0.95).requires_grad_(True)  # inside (0, 1): the output clamp stays inactive
    weights = torch.rand(image.shape, generator=torch.Generator().manual_seed(1))
    (diff_jpeg(image, 30) * weights).sum().backward()
    grad_q30 = image.grad.clone()
    assert torch.isfinite(grad_q30).all() and grad_q30.abs().sum() > 0
    image.grad = None
    (diff_jpeg(image, 100) * weights).sum().backward()  # no quantisation: the same linear map around the rounding
    assert torch.allclose(grad_q30, image.grad, atol=1e-5)


def test_forward_rounds_exactly():
    image = _photo(16, 16)
    with torch.no_grad():
        plain = diff_jpeg(image, 50)
    assert torch.equal(diff_jpeg(image.clone().requires_grad_(True), 50).detach(), plain)


# -- against the real codec -------------------------------------------------------------------------------------------
def test_it_degrades_a_little_more_than_libjpeg_and_most_at_sizes_not_multiple_of_16():
    """At quality 50 on a photo: 0–0.6 dB below libjpeg at 128², 0.5–2.5 dB below at 125² (the black padding)."""
    gaps = {}
    for side in (128, 125):
        image = _photo(side, side)
        real, ours = add_jpeg(image, 50), diff_jpeg(image, 50)
        gaps[side] = _psnr(real, image) - _psnr(ours, image)
        assert _psnr(real, ours) > 33  # the same codec family, not a different degradation
    assert 0 < gaps[128] < 0.6
    assert 0.5 < gaps[125] < 2.5 and gaps[125] > gaps[128]


def test_bad_inputs_raise_clear_errors():
    image = _photo(16, 16)
    with pytest.raises(ParameterError, match="quality"):
        diff_jpeg(image, 0)
    with pytest.raises(ParameterError, match="quality"):
        diff_jpeg(image, [50, 60])
    with pytest.raises(InvalidInputError, match="B×3×H×W"):
        diff_jpeg(image[0], 50)
    with pytest.raises(InvalidInputError, match="floating point"):
        diff_jpeg((image * 255).to(torch.uint8), 50)
