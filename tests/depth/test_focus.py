"""Focus selection from a mask, a point and automatically, including the error cases."""

from __future__ import annotations

import pytest
import torch

from magicbokeh.depth.focus import (
    focus_at_pixel,
    focus_auto,
    focus_from_mask,
    focus_from_point,
    load_saliency_model,
)
from magicbokeh.errors import ConfigError, EmptyMaskError, InvalidInputError, MissingWeightsError


def _two_planes(height: int = 32, width: int = 32) -> torch.Tensor:
    """1×H×W: background 0.2 on the left half, subject 0.8 on the right half."""
    disparity = torch.full((1, height, width), 0.2)
    disparity[:, :, width // 2 :] = 0.8
    return disparity


def test_mask_median_single_and_batch():
    disparity = torch.tensor([[[0.1, 0.2], [0.3, 0.9]]])
    mask = torch.tensor([[True, True], [True, False]])
    assert focus_from_mask(disparity, mask) == pytest.approx(0.2)
    # even count: mean of the two middle values, as numpy's median
    assert focus_from_mask(disparity, torch.tensor([[1, 1], [0, 0]])) == pytest.approx(0.15)
    batch = torch.stack([disparity, 1 - disparity])
    values = focus_from_mask(batch, mask)
    assert values.shape == (2,) and torch.allclose(values, torch.tensor([0.2, 0.8]))


def test_release_rules_lower_median_and_single_pixel():
    disparity = torch.tensor([[[0.1, 0.2, 0.7], [0.3, 0.9, 0.4]]])
    even = torch.tensor([[1, 1, 0], [1, 1, 0]])  # 0.1 0.2 0.3 0.9: middle values 0.2 and 0.3
    assert focus_from_mask(disparity, even) == pytest.approx(0.25)
    assert focus_from_mask(disparity, even, lower_median=True) == pytest.approx(0.2)  # torch.median
    # The release's click: the pixel (int(x), int(y)), coordinates truncated; no window, no edge handling.
    assert focus_at_pixel(disparity, (2.9, 0.99)) == pytest.approx(0.7)
    assert focus_at_pixel(disparity, (1, 1)) == pytest.approx(0.9)
    batch = torch.stack([disparity, 1 - disparity])
    assert torch.allclose(focus_at_pixel(batch, [(0, 0), (2, 1)]), torch.tensor([0.1, 0.6]))
    with pytest.raises(InvalidInputError, match="outside the 3×2 image"):
        focus_at_pixel(disparity, (3.0, 0))


def test_mask_errors():
    disparity = _two_planes()
    with pytest.raises(EmptyMaskError, match="empty"):
        focus_from_mask(disparity, torch.zeros(32, 32))
    with pytest.raises(InvalidInputError, match="does not match"):
        focus_from_mask(disparity, torch.ones(16, 16))
    batch = torch.stack([disparity, disparity])
    masks = torch.ones(2, 1, 32, 32)
    masks[1] = 0
    with pytest.raises(EmptyMaskError, match="image 1"):
        focus_from_mask(batch, masks)


def test_point_inside_a_plane_and_on_its_edge():
    disparity = _two_planes()
    assert focus_from_point(disparity, (25, 10)) == pytest.approx(0.8)
    assert focus_from_point(disparity, (3, 10)) == pytest.approx(0.2)
    # Clicking exactly on the boundary column picks one surface, never the 0.5 average of both.
    on_edge = focus_from_point(disparity, (16, 10), window=9)
    assert on_edge in (pytest.approx(0.2), pytest.approx(0.8))


def test_point_is_robust_to_an_outlier_pixel():
    disparity = torch.full((1, 20, 20), 0.5)
    disparity[0, 10, 10] = 1.0  # a spike exactly under the click
    assert focus_from_point(disparity, (10, 10), window=7) == pytest.approx(0.5)


def test_point_near_the_border_and_batched():
    disparity = _two_planes()
    assert focus_from_point(disparity, (31, 31)) == pytest.approx(0.8)
    batch = torch.stack([disparity, 1 - disparity])
    values = focus_from_point(batch, [(25, 5), (25, 5)])
    assert torch.allclose(values, torch.tensor([0.8, 0.2]))


@pytest.mark.parametrize("point", [(-1, 5), (32, 5), (5, 32), (5, -0.6)])
def test_point_outside_the_image_raises(point):
    with pytest.raises(InvalidInputError, match="outside"):
        focus_from_point(_two_planes(), point)


def test_point_bad_window_and_bad_disparity():
    with pytest.raises(InvalidInputError, match="odd"):
        focus_from_point(_two_planes(), (5, 5), window=4)
    with pytest.raises(InvalidInputError, match="1×H×W or B×1×H×W"):
        focus_from_point(torch.rand(3, 8, 8), (1, 1))


def test_auto_fallback_prefers_the_centre():
    disparity = torch.full((1, 40, 40), 0.1)
    disparity[:, 12:28, 12:28] = 0.7  # subject in the middle
    assert focus_auto(disparity) == pytest.approx(0.7)
    off_centre = torch.full((1, 40, 40), 0.1)
    off_centre[:, :6, :6] = 0.9  # a small near object in a corner does not win
    assert focus_auto(off_centre) == pytest.approx(0.1)


def test_auto_with_a_saliency_model_uses_its_mask():
    disparity = _two_planes()

    def left_half_is_salient(images):
        saliency = torch.zeros(images.shape[0], 1, 8, 8)
        saliency[..., :4] = 1.0
        return saliency

    image = torch.rand(3, 32, 32)
    assert focus_auto(disparity, image, left_half_is_salient) == pytest.approx(0.2)
    with pytest.raises(InvalidInputError, match="needs the image"):
        focus_auto(disparity, None, left_half_is_salient)


def test_saliency_loader(tmp_path):
    assert load_saliency_model(None) is None
    with pytest.raises(MissingWeightsError, match="paths.saliency"):
        load_saliency_model(tmp_path / "ldf.pt2")
    auto = torch.export.Dim.AUTO
    exported = torch.export.export(
        torch.nn.Sigmoid(), (torch.zeros(2, 1, 4, 4),), dynamic_shapes=({0: auto, 2: auto, 3: auto},)
    )
    path = tmp_path / "sigmoid.pt2"
    torch.export.save(exported, str(path))
    model = load_saliency_model(path)
    assert torch.allclose(model(torch.zeros(1, 1, 2, 3)), torch.full((1, 1, 2, 3), 0.5))
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"nope")
    with pytest.raises(ConfigError, match="torch.export archive"):
        load_saliency_model(bad)
