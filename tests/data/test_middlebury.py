"""Real data with ground-truth disparity: Middlebury 2014 "motorcycle", shipped offline with scikit-image."""

import numpy as np
import pytest
import torch

from magicbokeh.data.middlebury import fill_occlusions, load_stereo_motorcycle, motorcycle_focus
from magicbokeh.data.renderer_benchmark import write_grid
from magicbokeh.optics import render_bokeh


@pytest.fixture(scope="module")
def motorcycle():
    return load_stereo_motorcycle((100, 148))


def test_disparity_is_converted_to_our_convention(motorcycle):
    image, disparity = motorcycle
    assert image.shape == (1, 3, 100, 148) and disparity.shape == (1, 1, 100, 148)
    assert torch.isfinite(disparity).all() and disparity.min() >= 0 and disparity.max() <= 1
    assert disparity.max() - disparity.min() > 0.9  # uses the whole range
    # 1 = nearest: the floor at the bottom and the motorcycle are nearer than the back wall at the top.
    assert disparity[..., -5:, :].mean() > disparity[..., :10, :].mean() + 0.3
    assert motorcycle_focus(disparity) > disparity[..., :10, :].mean() + 0.3


def test_occlusion_holes_are_filled_with_the_farther_surface():
    """Invalid (inf) disparities take the smaller of the nearest valid values left and right on their row."""
    inf = float("inf")
    raw = np.array([[inf, 5.0, inf, inf, 2.0, inf], [3.0, inf, 4.0, 0.0, 6.0, 6.0]])
    expected = np.array([[5.0, 5.0, 2.0, 2.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0, 6.0, 6.0]])
    np.testing.assert_array_equal(fill_occlusions(raw), expected)


@pytest.mark.parametrize("method", ["layered", "scatter"])
def test_render_keeps_the_focused_motorcycle_and_blurs_the_background(motorcycle, method):
    image, disparity = motorcycle
    focus = motorcycle_focus(disparity)
    out = render_bokeh(image, disparity, focus, 8.0, method=method)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    difference = (out - image).abs().mean(dim=1, keepdim=True)
    in_focus = (disparity - focus).abs() < 0.02
    far = disparity < focus - 0.4
    assert in_focus.sum() > 100 and far.sum() > 100
    assert difference[in_focus].mean() < 0.02
    assert difference[far].mean() > 2 * difference[in_focus].mean()


def test_layered_and_scatter_agree_away_from_depth_edges(motorcycle):
    image, disparity = motorcycle
    focus = motorcycle_focus(disparity)
    layered = render_bokeh(image, disparity, focus, 8.0, method="layered")
    scatter = render_bokeh(image, disparity, focus, 8.0, method="scatter")
    assert (layered - scatter).abs().mean() < 0.02


@pytest.mark.slow
def test_grid_picture_is_written(tmp_path):
    path = write_grid(tmp_path / "grid.png")
    assert path.stat().st_size > 10_000
