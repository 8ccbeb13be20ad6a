"""mode=classical: bicubic upsampling + the optics renderer behind the same focus/K interface."""

from __future__ import annotations

import pytest
import torch

from magicbokeh.errors import ParameterError
from magicbokeh.inference.classical import ClassicalPipeline
from magicbokeh.optics import BokehRenderer


def _scene():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 32, 48, generator=generator) * 0.8 + 0.1
    disparity = torch.zeros(1, 32, 48)
    disparity[:, :, 24:] = 1.0  # right half near, left half far
    return image, disparity


def test_K_zero_is_the_upsampled_photo_and_K_blurs_the_defocused_half():
    image, disparity = _scene()
    pipe = ClassicalPipeline(BokehRenderer(max_coc_px=6.0, num_layers=6))
    sharp = pipe.run(image, focus=1.0, K=0, scale=1, disparity=disparity)
    torch.testing.assert_close(sharp.image[0], image, atol=1e-4, rtol=0)
    blurred = pipe.run(image, focus=1.0, K=32, scale=2, disparity=disparity)
    assert blurred.image.shape == (1, 3, 64, 96)
    near, far = blurred.image[0, :, 8:56, 60:92], blurred.image[0, :, 8:56, 4:36]
    assert far.std() < 0.5 * near.std()  # the far half lost its texture, the focused near half kept it
    assert blurred.defocus[0, 0, 0, 0] == pytest.approx(1.0) and blurred.defocus[0, 0, 0, -1] == 0


def test_K_out_of_range():
    image, disparity = _scene()
    with pytest.raises(ParameterError, match="K must be"):
        ClassicalPipeline(BokehRenderer()).run(image, focus=0.5, K=33, scale=1, disparity=disparity)
