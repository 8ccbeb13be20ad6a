"""Colour fix: AdaIN matches the reference's channel statistics; banded processing equals whole-image processing."""

from __future__ import annotations

import pytest
import torch

from magicbokeh.errors import InvalidInputError, ParameterError
from magicbokeh.inference.color_fix import adain_color_fix, color_fix, wavelet_color_fix


def _pair(height=70, width=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    reference = torch.rand(1, 3, height, width, generator=generator) * 0.6 + 0.2
    # A tinted, contrast-changed version of the reference: what a colour-drifting network produces.
    tint = torch.tensor([1.2, 0.9, 0.8]).view(1, 3, 1, 1)
    output = ((reference - 0.5) * 0.7 * tint + 0.5 + torch.tensor([0.05, -0.03, 0.02]).view(1, 3, 1, 1)).clamp(0, 1)
    return output, reference


def test_adain_restores_the_reference_channel_statistics():
    output, reference = _pair()
    fixed = color_fix(output, reference, "adain")
    torch.testing.assert_close(fixed.mean(dim=(0, 2, 3)), reference.mean(dim=(0, 2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(fixed.std(dim=(0, 2, 3)), reference.std(dim=(0, 2, 3)), atol=1e-3, rtol=0)
    # An affine per-channel drift is undone exactly (up to the variance epsilon).
    torch.testing.assert_close(fixed, reference, atol=2e-3, rtol=0)


def test_adain_banded_equals_one_band():
    output, reference = _pair(131, 40, seed=3)
    torch.testing.assert_close(
        adain_color_fix(output, reference, band_rows=7), adain_color_fix(output, reference, band_rows=1000)
    )


def test_wavelet_banded_equals_whole_image():
    output, reference = _pair(203, 45, seed=4)
    banded = wavelet_color_fix(output, reference, band_rows=16)
    whole = wavelet_color_fix(output, reference, band_rows=10_000)
    torch.testing.assert_close(banded, whole, atol=1e-6, rtol=0)


def test_wavelet_takes_low_frequencies_from_the_reference():
    output, reference = _pair(96, 96, seed=5)
    fixed = color_fix(output, reference, "wavelet")
    # The global tint is a low frequency: the fixed mean follows the reference, not the drifted output.
    error_before = (output.mean(dim=(2, 3)) - reference.mean(dim=(2, 3))).abs().max()
    error_after = (fixed.mean(dim=(2, 3)) - reference.mean(dim=(2, 3))).abs().max()
    assert error_after < 0.1 * error_before
    assert torch.allclose(color_fix(reference, reference, "wavelet"), reference, atol=1e-5)


def test_none_and_errors():
    output, reference = _pair()
    assert color_fix(output, reference, "none") is output
    with pytest.raises(ParameterError, match="color_fix"):
        color_fix(output, reference, "histogram")
    with pytest.raises(InvalidInputError, match="equal shape"):
        color_fix(output, reference[..., :10], "adain")


def test_inplace_adain_reuses_the_output_buffer():
    output, reference = _pair()
    expected = color_fix(output.clone(), reference, "adain")
    fixed = color_fix(output, reference, "adain", inplace=True)
    assert fixed.data_ptr() == output.data_ptr()
    torch.testing.assert_close(fixed, expected)
