"""Property tests of the classical renderers (REFERENCE e1 and issue 3 "Must show").

Tolerances: identities (blur 0, constant image, in-focus plane, flips, float32 vs float64) hold to 1e-5 in display
values; energy is conserved to 1e-4 (1 % when large circles are blurred at reduced resolution).
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from magicbokeh.errors import InvalidInputError, ParameterError
from magicbokeh.optics import (
    ApertureSpec,
    BokehRenderer,
    HighlightBoost,
    blur_px_for_K,
    render_bokeh,
    render_layers,
    to_linear,
)
from magicbokeh.optics.render import _lowres_scale

METHODS = ["layered", "scatter"]


def _smooth_texture(generator, height, width, batch=1):
    noise = torch.rand(batch, 3, height + 4, width + 4, generator=generator)
    return F.avg_pool2d(noise, 5, stride=1)


def _point(size=49, dtype=torch.float32):
    image = torch.zeros(1, 3, size, size, dtype=dtype)
    image[..., size // 2, size // 2] = 1.0
    return image


@pytest.mark.parametrize("method", METHODS)
def test_blur_zero_is_the_identity(method):
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 24, 30, generator=generator)
    disparity = torch.rand(2, 1, 24, 30, generator=generator)
    out = render_bokeh(image, disparity, torch.tensor([0.2, 0.9]), 0.0, method=method)
    assert (out - image).abs().max() < 1e-5


def test_render_layers_with_blur_zero_is_the_over_composite():
    generator = torch.Generator().manual_seed(1)
    colors = torch.rand(1, 2, 3, 16, 16, generator=generator)
    alphas = torch.ones(1, 2, 1, 16, 16)
    alphas[:, 1] = torch.rand(1, 1, 16, 16, generator=generator)
    out = render_layers(colors, alphas, torch.tensor([[0.1, 0.7]]), 0.5, 0.0)
    expected = (alphas[:, 1] * colors[:, 1] ** 2.2 + (1 - alphas[:, 1]) * colors[:, 0] ** 2.2) ** (1 / 2.2)
    assert (out - expected).abs().max() < 1e-5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("blur", [3.0, 11.0, 40.0])
def test_constant_image_stays_constant_for_any_disparity(method, blur):
    generator = torch.Generator().manual_seed(2)
    disparity = torch.rand(1, 1, 40, 44, generator=generator)
    image = torch.full((1, 3, 40, 44), 0.37)
    out = render_bokeh(image, disparity, 0.4, blur, method=method)
    assert (out - 0.37).abs().max() < 1e-5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("radius", "downsample"), [(6.0, False), (6.0, True), (9.5, False), (20.0, True)])
def test_point_energy_is_conserved_and_spreads_to_a_disk_of_the_radius(method, radius, downsample):
    image = _point(61)
    disparity = torch.zeros(1, 1, 61, 61)
    out = render_bokeh(image, disparity, 1.0, radius, method=method, downsample=downsample)
    linear = to_linear(out, 2.2)[0, 0].double()
    tolerance = 1e-2 if _lowres_scale(radius, downsample) > 1 else 1e-4
    assert linear.sum().item() == pytest.approx(1.0, abs=tolerance)
    coords = torch.arange(61, dtype=torch.float64) - 30
    distance = torch.hypot(coords[:, None], coords[None, :])
    support = linear > 1e-3 * linear.max()
    # Reduced-resolution blur (radius ≥ 12 px) softens the edge by about its downsampling factor (2 at radius 20).
    softening = 2 * _lowres_scale(radius, downsample) if _lowres_scale(radius, downsample) > 1 else 0
    assert radius - 1.0 <= distance[support].max().item() <= radius + 1.0 + softening
    area = (linear > 0.5 * linear.max()).sum().item()
    assert area == pytest.approx(math.pi * radius**2, rel=0.1)


@pytest.mark.parametrize("blades", [5, 6])
def test_point_spreads_to_an_n_gon_for_an_n_blade_aperture(blades):
    radius, size = 12.0, 41
    aperture = ApertureSpec("polygon", blades, rotation_deg=90.0)
    out = render_bokeh(_point(size), torch.zeros(1, 1, size, size), 1.0, radius, aperture=aperture)
    shape = to_linear(out, 2.2)[0, 0] > 0.5 * to_linear(out, 2.2).max()
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    normals = math.radians(90.0) + math.pi / blades + 2 * math.pi * torch.arange(blades) / blades
    projections = x[..., None] * torch.cos(normals) + y[..., None] * torch.sin(normals)
    ideal = projections.amax(dim=-1) <= radius * math.cos(math.pi / blades)
    iou = (shape & ideal).sum() / (shape | ideal).sum()
    assert iou > 0.85
    disk = torch.hypot(x, y) <= radius
    assert (shape & disk).sum() / (shape | disk).sum() < iou  # it is the polygon, not the circle


@pytest.mark.parametrize("method", METHODS)
def test_blur_grows_monotonically_with_K(method):
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 48, 48, generator=generator)
    disparity = torch.rand(1, 1, 48, 48, generator=generator) * 0.5
    variation = []
    for K in (0, 4, 8, 16, 32):
        out = render_bokeh(image, disparity, 0.9, blur_px_for_K(K, 16.0), method=method)
        vertical, horizontal = out[..., 1:, :] - out[..., :-1, :], out[..., 1:] - out[..., :-1]
        variation.append(vertical.abs().mean() + horizontal.abs().mean())
    assert all(a > b for a, b in itertools.pairwise(variation))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dims", [(-1,), (-2,), (-2, -1)])
def test_flip_symmetry(method, dims):
    generator = torch.Generator().manual_seed(4)
    image = torch.rand(1, 3, 32, 36, generator=generator)
    disparity = torch.rand(1, 1, 32, 36, generator=generator)
    out = render_bokeh(image, disparity, 0.5, 7.0, method=method)
    flipped = render_bokeh(image.flip(dims), disparity.flip(dims), 0.5, 7.0, method=method)
    assert (flipped.flip(dims) - out).abs().max() < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_in_focus_plane_is_unchanged(method):
    """A scene entirely on the focal plane is reproduced for any K; the focal plane of a deeper scene too, beyond
    the reach of the blurred content (a sharp subject in front of a blurred background: see the bleeding test)."""
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 30, 30, generator=generator)
    out = render_bokeh(image, torch.full((1, 1, 30, 30), 0.6), 0.6, 32.0, method=method)
    assert (out - image).abs().max() < 1e-5
    disparity = torch.full((1, 1, 30, 30), 0.6)
    disparity[..., :6, :] = 0.2  # a strip behind, blurred with radius 12.8 px: it reaches row 18 at most
    disparity[..., 25:, :] = 0.595  # circle of confusion 0.16 px: still sharp, though slices are 1.6 px apart
    out = render_bokeh(image, disparity, 0.6, 32.0, method=method)
    assert (out - image)[..., 20:, :].abs().max() < 1e-5
    assert (out - image)[..., :6, :].abs().mean() > 0.05


def _subject_scene():
    """A red, in-focus square (nearest) in front of a blue/green textured background far behind it."""
    generator = torch.Generator().manual_seed(6)
    image = _smooth_texture(generator, 40, 40)
    image[:, 0] = 0.0  # the background has no red at all
    image[:, :, 14:26, 14:26] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    disparity = torch.full((1, 1, 40, 40), 0.1)
    disparity[..., 14:26, 14:26] = 0.9
    return image, disparity


def test_sharp_subject_keeps_its_edge_colours_and_does_not_bleed_onto_the_background():
    image, disparity = _subject_scene()
    out = render_bokeh(image, disparity, 0.9, 12.0, method="layered")
    subject = disparity > 0.5
    assert (out - image).abs().amax(dim=1, keepdim=True)[subject].max() < 1e-5  # every subject pixel, edges included
    assert out[:, :1][~subject].max() < 1e-4  # no red anywhere on the blurred background
    assert (out - image)[:, 1:][~subject.expand(-1, 2, -1, -1)].abs().mean() > 0.01  # which really is blurred


def test_blurred_foreground_becomes_partially_transparent_over_the_background():
    """Layered scene: an opaque red square in front, out of focus; a green background in focus, complete behind it."""
    colors = torch.zeros(1, 2, 3, 48, 48)
    colors[:, 0, 1] = 0.8  # background: green everywhere, including behind the square
    colors[:, 1, 0] = 0.9  # foreground: red
    alphas = torch.ones(1, 2, 1, 48, 48)
    alphas[:, 1] = 0.0
    alphas[:, 1, :, 16:32, 16:32] = 1.0
    out = render_layers(colors, alphas, torch.tensor([[0.0, 1.0]]), 0.0, 6.0)[0]
    red, green = out[0], out[1]
    # Far inside the square: foreground only; far outside: background unchanged (in focus). (A linear-light residue
    # of 1e-7 from float32 FFTs reads as ≤ 1e-3 after the inverse gamma.)
    assert red[24, 24] == pytest.approx(0.9, abs=1e-4) and green[24, 24] < 2e-3
    assert green[4, 4] == pytest.approx(0.8, abs=1e-4) and red[4, 4] < 2e-3
    # At the edge, inside the square's footprint, the hidden background shows through the blurred foreground …
    assert 0.2 < green[24, 17] < 0.8 and 0.2 < red[24, 17] < 0.9
    # … and just outside, the blurred foreground is a semi-transparent veil over the background.
    assert 0.2 < red[24, 14] < 0.9 and 0.2 < green[24, 14] < 0.8


@pytest.mark.parametrize("method", METHODS)
def test_float32_and_float64_agree(method):
    generator = torch.Generator().manual_seed(7)
    image = torch.rand(1, 3, 28, 28, generator=generator, dtype=torch.float64)
    disparity = torch.rand(1, 1, 28, 28, generator=generator, dtype=torch.float64)
    out64 = render_bokeh(image, disparity, 0.3, 9.0, method=method)
    out32 = render_bokeh(image.float(), disparity.float(), 0.3, 9.0, method=method)
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    assert (out64 - out32.double()).abs().max() < 1e-5


def test_render_layers_float32_and_float64_agree():
    generator = torch.Generator().manual_seed(8)
    colors = torch.rand(1, 3, 3, 20, 20, generator=generator, dtype=torch.float64)
    alphas = torch.rand(1, 3, 1, 20, 20, generator=generator, dtype=torch.float64)
    alphas[:, 0] = 1.0
    maps = torch.rand(1, 3, 1, 20, 20, generator=generator, dtype=torch.float64)
    out64 = render_layers(colors, alphas, maps, 0.5, 6.0)
    out32 = render_layers(colors.float(), alphas.float(), maps.float(), 0.5, 6.0)
    assert (out64 - out32.double()).abs().max() < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_batch_with_per_sample_focus_and_blur_equals_single_renders(method):
    generator = torch.Generator().manual_seed(9)
    image = torch.rand(3, 3, 20, 24, generator=generator)
    disparity = torch.rand(3, 1, 20, 24, generator=generator)
    focus, blur = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.0, 4.0, 9.0])
    batched = render_bokeh(image, disparity, focus, blur, method=method)
    for b in range(3):
        single = render_bokeh(image[b : b + 1], disparity[b : b + 1], float(focus[b]), float(blur[b]), method=method)
        assert torch.allclose(batched[b : b + 1], single, atol=1e-6)


def _directional_derivative_matches(fn, inputs, generator):
    """Autograd's derivative along a random direction equals the central finite difference (float64)."""
    directions = [torch.randn(x.shape, generator=generator, dtype=x.dtype) for x in inputs]
    inputs = [x.detach().requires_grad_(True) for x in inputs]
    weights = torch.randn(fn(*inputs).shape, generator=generator, dtype=torch.float64)
    (fn(*inputs) * weights).sum().backward()
    analytic = sum((x.grad * d).sum() for x, d in zip(inputs, directions))
    eps = 1e-6
    with torch.no_grad():
        plus = (fn(*[x + eps * d for x, d in zip(inputs, directions)]) * weights).sum()
        minus = (fn(*[x - eps * d for x, d in zip(inputs, directions)]) * weights).sum()
    numeric = (plus - minus) / (2 * eps)
    assert all(torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 for x in inputs)
    assert float(analytic) == pytest.approx(float(numeric), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_flow_to_the_image(method):
    generator = torch.Generator().manual_seed(10)
    image = 0.1 + 0.8 * torch.rand(1, 3, 12, 12, generator=generator, dtype=torch.float64)
    disparity = torch.rand(1, 1, 12, 12, generator=generator, dtype=torch.float64)
    _directional_derivative_matches(lambda x: render_bokeh(x, disparity, 0.5, 3.0, method=method), [image], generator)


def test_gradients_flow_to_layer_colours_and_alphas():
    generator = torch.Generator().manual_seed(11)
    colors = 0.1 + 0.8 * torch.rand(1, 2, 3, 12, 12, generator=generator, dtype=torch.float64)
    alphas = 0.2 + 0.6 * torch.rand(1, 2, 1, 12, 12, generator=generator, dtype=torch.float64)
    maps = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    _directional_derivative_matches(lambda c, a: render_layers(c, a, maps, 0.5, 2.0), [colors, alphas], generator)


def test_highlight_boost_brightens_out_of_focus_highlights_only():
    image = torch.full((1, 3, 41, 41), 0.2)
    image[..., 18:23, 18:23] = 0.97
    far = torch.zeros(1, 1, 41, 41)
    plain = render_bokeh(image, far, 1.0, 8.0)
    boosted = render_bokeh(image, far, 1.0, 8.0, highlight=HighlightBoost())
    assert boosted.max() > plain.max() + 0.02
    in_focus = render_bokeh(image, far, 1.0, 0.0, highlight=HighlightBoost())
    assert torch.equal(in_focus, render_bokeh(image, far, 1.0, 0.0))


def test_gamma_makes_bokeh_balls_from_highlights_brighter():
    image = torch.full((1, 3, 41, 41), 0.1)
    image[..., 20, 20] = 1.0
    far = torch.zeros(1, 1, 41, 41)
    assert render_bokeh(image, far, 1.0, 6.0, gamma=2.2).max() > render_bokeh(image, far, 1.0, 6.0, gamma=1.0).max()


def test_bokeh_renderer_settings_use_the_K_to_pixels_conversion():
    generator = torch.Generator().manual_seed(12)
    image, disparity = torch.rand(1, 3, 16, 16, generator=generator), torch.rand(1, 1, 16, 16, generator=generator)
    renderer = BokehRenderer(max_coc_px=20.0, aperture={"shape": "polygon", "blades": 6, "rotation_deg": 0.0})
    assert renderer.blur_px(16) == pytest.approx(10.0)
    expected = render_bokeh(image, disparity, 0.5, 10.0, aperture=ApertureSpec("polygon", 6))
    assert torch.equal(renderer(image, disparity, 0.5, 16), expected)
    assert BokehRenderer(highlight={"enabled": False, "threshold": 0.8, "boost": 0.4}).highlight is None
    assert BokehRenderer(highlight={"enabled": True, "threshold": 0.8, "boost": 0.4}).highlight == HighlightBoost(0.8)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"disparity": torch.full((1, 1, 8, 8), float("nan"))}, InvalidInputError),
        ({"disparity": torch.zeros(1, 1, 8, 9)}, InvalidInputError),
        ({"image": torch.zeros(1, 4, 8, 8)}, InvalidInputError),
        ({"blur_px": -1.0}, ParameterError),
        ({"blur_px": torch.tensor([1.0, 2.0, 3.0])}, InvalidInputError),
        ({"method": "gather"}, ParameterError),
        ({"num_layers": 2}, ParameterError),
        ({"gamma": 0.0}, ParameterError),
    ],
)
def test_bad_input_raises_actionable_errors(kwargs, error):
    arguments = {"image": torch.zeros(1, 3, 8, 8), "disparity": torch.zeros(1, 1, 8, 8), "blur_px": 2.0}
    arguments.update(kwargs)
    image, disparity, blur = arguments.pop("image"), arguments.pop("disparity"), arguments.pop("blur_px")
    with pytest.raises(error):
        render_bokeh(image, disparity, 0.5, blur, **arguments)


def test_render_layers_rejects_an_all_transparent_stack():
    with pytest.raises(InvalidInputError, match="transparent"):
        render_layers(torch.zeros(1, 1, 3, 4, 4), torch.zeros(1, 1, 1, 4, 4), torch.zeros(1, 1), 0.5, 1.0)
