"""The defocus condition and the renderer's circle of confusion agree by construction (DESIGN §3)."""

import numpy as np
import pytest
import torch

from magicbokeh.errors import InvalidInputError, ParameterError, plain_values
from magicbokeh.optics.coc import K_for_blur_px, blur_px_for_K, check_K, coc_radius_px
from magicbokeh.optics.defocus import defocus_map, in_focus_mask


def _disparity():
    return torch.linspace(0, 1, 12).reshape(1, 1, 3, 4)


@pytest.mark.parametrize("K", [0.0, 1.0, 8.0, 16.0, 32.0])
@pytest.mark.parametrize("max_coc_px", [4.0, 24.0])
def test_condition_and_renderer_radius_agree(K, max_coc_px):
    """Renderer radius = defocus · max_coc_px for every pixel, focus and K: the pin between model and renderer."""
    disparity, focus = _disparity(), 0.37
    radius = coc_radius_px(disparity, focus, blur_px_for_K(K, max_coc_px))
    torch.testing.assert_close(radius, defocus_map(disparity, focus, K) * max_coc_px)


def test_defocus_values_and_per_sample_arguments():
    disparity = torch.stack([_disparity()[0], 1 - _disparity()[0]])
    defocus = defocus_map(disparity, torch.tensor([0.0, 0.5]), torch.tensor([32.0, 16.0]))
    torch.testing.assert_close(defocus[0], disparity[0])
    torch.testing.assert_close(defocus[1], (disparity[1] - 0.5).abs() * 0.5)
    assert defocus_map(disparity, 0.3, 0.0).abs().max() == 0  # K = 0: pure super-resolution


def test_in_focus_rule():
    defocus = torch.tensor([0.0, 0.1, 0.1001, 1.0]).reshape(1, 1, 1, 4)
    assert in_focus_mask(defocus).flatten().tolist() == [True, True, False, False]


def test_K_round_trip_and_range_errors():
    assert K_for_blur_px(blur_px_for_K(12.0, 40.0), 40.0) == pytest.approx(12.0)
    for bad in (-1.0, 33.0, float("nan")):
        with pytest.raises(ParameterError, match="K must be in"):
            defocus_map(_disparity(), 0.5, bad)
    with pytest.raises(ParameterError, match="focus_disparity"):
        defocus_map(_disparity(), 1.5, 8.0)
    with pytest.raises(InvalidInputError, match="NaN"):
        defocus_map(torch.full((1, 1, 2, 2), float("nan")), 0.5, 8.0)
    with pytest.raises(InvalidInputError, match=r"B×1×H×W"):
        defocus_map(torch.zeros(1, 3, 2, 2), 0.5, 8.0)


def test_errors_print_numbers_not_tensors():
    with pytest.raises(ParameterError, match=r"got \[16, 100\]$"):
        check_K(torch.tensor([16.0, 100.0]))
    with pytest.raises(ParameterError, match=r"focus_disparity must be in \[0, 1\], got \[1.5\]$"):
        defocus_map(torch.rand(1, 1, 4, 4), torch.tensor([1.5]), 8)
    assert plain_values(torch.tensor(2.5)) == "2.5" and plain_values(np.float32(33)) == "33"
    assert plain_values(torch.arange(20.0)) == "[0, 1, 2, 3, 4, 5, 6, 7, … (20 values)]"
