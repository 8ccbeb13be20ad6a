"""The fast renderers against the brute-force per-pixel scatter (exact kernel per source pixel, no slicing).

Stated tolerances (display values in [0, 1], smooth textures as in photos): scatter ≤ 0.01 max and ≤ 0.001 mean;
layers ≤ 0.02 max and ≤ 0.002 mean. The remaining difference is the radius slicing (a pixel between two slice radii
gets a mix of their kernels); it shrinks towards 0 as the slicing gets finer, which a test shows on white noise (the
worst case).
"""

import pytest
import torch
import torch.nn.functional as F

import magicbokeh.optics.render as render_module
from magicbokeh.optics import ApertureSpec, render_bokeh, render_layers
from magicbokeh.optics.reference import render_layers_reference, render_scatter_reference, scatter_reference

SIZE = 28


def _scene(generator, noise=False):
    if noise:
        image = torch.rand(3, SIZE, SIZE, generator=generator)
    else:
        image = F.avg_pool2d(torch.rand(1, 3, SIZE + 4, SIZE + 4, generator=generator), 5, stride=1)[0]
    x = torch.arange(SIZE, dtype=torch.float32)
    disparity = (0.2 + 0.6 * x / SIZE).expand(SIZE, SIZE)[None].clone()  # a slanted plane …
    disparity[:, 8:18, 8:18] = 0.9  # … and a square in front of it
    return image, disparity


def test_scatter_reference_spreads_each_pixel_with_its_own_kernel():
    values = torch.zeros(1, 9, 9)
    values[0, 4, 4] = 1.0
    radius = torch.full((9, 9), 2.0)
    out = scatter_reference(values, radius)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert out[0, 4, 4] > out[0, 4, 6] > 0 and out[0, 4, 7] == 0


@pytest.mark.parametrize("blur", [2.0, 5.0, 9.0])
@pytest.mark.parametrize("aperture", ["disk", ApertureSpec("polygon", 6, 10.0)])
def test_fast_scatter_matches_the_brute_force_reference(blur, aperture):
    image, disparity = _scene(torch.Generator().manual_seed(0))
    reference = render_scatter_reference(image, disparity, 0.5, blur, aperture=aperture)
    fast = render_bokeh(image[None], disparity[None], 0.5, blur, method="scatter", aperture=aperture)[0]
    error = (fast - reference).abs()
    assert error.max() < 0.01 and error.mean() < 0.001


def test_fast_scatter_converges_to_the_reference_as_slices_get_finer(monkeypatch):
    image, disparity = _scene(torch.Generator().manual_seed(1), noise=True)
    reference = render_scatter_reference(image, disparity, 0.5, 5.0)
    errors = []
    for step in (0.5, 0.25, 0.1):
        monkeypatch.setattr(render_module, "MIN_STEP_PX", step)
        fast = render_bokeh(image[None], disparity[None], 0.5, 5.0, method="scatter", num_layers=200)[0]
        errors.append(float((fast - reference).abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03


@pytest.mark.parametrize("blur", [2.0, 5.0, 9.0])
def test_render_layers_matches_the_layered_brute_force_reference(blur):
    generator = torch.Generator().manual_seed(2)
    image, ramp = _scene(generator)
    colors = torch.stack([image, image.flip(-1), image.flip(-2)])
    alphas = torch.zeros(3, 1, SIZE, SIZE)
    alphas[0] = 1.0
    alphas[1, :, 5:15, 5:20] = 1.0
    alphas[2, :, 12:22, 10:25] = 0.7
    alphas[2, :, 12, 10:25] = 0.3  # a soft edge
    maps = torch.stack([ramp * 0.3, torch.full_like(ramp, 0.5), torch.full_like(ramp, 0.8)])
    reference = render_layers_reference(colors, alphas, maps, 0.5, blur)
    fast = render_layers(colors[None], alphas[None], maps[None], 0.5, blur)[0]
    error = (fast - reference).abs()
    assert error.max() < 0.02 and error.mean() < 0.002


def test_reduced_resolution_blur_stays_close_to_full_resolution():
    image, disparity = _scene(torch.Generator().manual_seed(3))
    image, disparity = F.interpolate(image[None], size=64), F.interpolate(disparity[None], size=64)
    full = render_bokeh(image, disparity, 0.9, 30.0, downsample=False)
    reduced = render_bokeh(image, disparity, 0.9, 30.0, downsample=True)
    assert (full - reduced).abs().mean() < 0.01
