"""Colour fix: AdaIN matches the reference's channel statistics; banded processing equals whole-image processing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from magicbokeh.data.io import read_image
from magicbokeh.errors import InvalidInputError, ParameterError
from magicbokeh.inference.color_fix import (
    adain_color_fix,
    color_fix,
    release_color_fix,
    truncate_8bit,
    wavelet_color_fix,
)

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples" / "synthetic"


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


def test_release_color_fix_is_adain_between_two_8_bit_truncations():
    output, reference = _pair(60, 40, seed=6)
    reference = truncate_8bit(reference)  # an 8-bit photo
    fixed = release_color_fix(output.clone(), reference)
    torch.testing.assert_close(fixed * 255, (fixed * 255).round(), atol=1e-4, rtol=0)  # whole 8-bit levels
    quantized = torch.floor(output * 255) / 255
    flat, ref = quantized.reshape(1, 3, -1), reference.reshape(1, 3, -1)
    mean, std = flat.mean(2).view(1, 3, 1, 1), (flat.var(2) + 1e-5).sqrt().view(1, 3, 1, 1)
    ref_mean, ref_std = ref.mean(2).view(1, 3, 1, 1), (ref.var(2) + 1e-5).sqrt().view(1, 3, 1, 1)
    expected = torch.floor(((quantized - mean) / std * ref_std + ref_mean).clamp(0, 1) * 255) / 255
    assert ((fixed - expected).abs() * 255).max() <= 1 + 1e-4  # ties of the last truncation may fall either way
    assert (fixed != expected).float().mean() < 0.01
    # Truncation, not rounding: about half a level darker than the float AdaIN.
    darker = (adain_color_fix(output, reference) - fixed).mean() * 255
    assert 0.3 < darker < 0.7


def test_adain_moves_a_saturated_subject_when_the_background_is_blurred():
    """Not a bug but the method: even the exact bokeh of a scene (its rendered ground truth, standing in for a
    perfect network) has lower per-channel contrast than the all-in-focus input, by a different factor per channel,
    so AdaIN's per-channel gains σ_in/σ_out differ and a saturated subject changes hue; the implementation is the
    textbook formula. The wavelet fix, local, leaves the subject closer to the exact bokeh."""
    photo = read_image(SAMPLES / "image" / "000002.png")[None]
    bokeh = read_image(SAMPLES / "bokeh" / "000002.png")[None]
    fixed = adain_color_fix(bokeh, photo)
    flat_out, flat_in = bokeh.reshape(1, 3, -1), photo.reshape(1, 3, -1)
    gain = ((flat_in.var(2) + 1e-5) / (flat_out.var(2) + 1e-5)).sqrt().view(1, 3, 1, 1)
    formula = ((bokeh - flat_out.mean(2).view(1, 3, 1, 1)) * gain + flat_in.mean(2).view(1, 3, 1, 1)).clamp(0, 1)
    torch.testing.assert_close(fixed, formula, atol=1e-6, rtol=0)
    assert gain.flatten().max() - gain.flatten().min() > 0.05  # per-channel gains differ by more than 5 %
    red, green, blue = bokeh[0]
    subject = (red > 0.7) & (green > 0.5) & (blue < 0.45)  # the orange-yellow object
    assert subject.sum() > 100

    def colour(image):
        return torch.stack([channel[subject].mean() for channel in image[0]]) * 255

    adain_shift = (colour(fixed) - colour(bokeh)).abs().max()
    wavelet_shift = (colour(wavelet_color_fix(bokeh, photo)) - colour(bokeh)).abs().max()
    assert adain_shift > 2.5 and wavelet_shift < adain_shift  # in 8-bit levels
