"""Aperture kernels: normalised, continuous in sub-pixel radii, the right shape."""

import itertools
import math

import pytest
import torch

from magicbokeh.errors import ParameterError
from magicbokeh.optics import ApertureSpec, aperture_kernel, as_aperture


@pytest.mark.parametrize("aperture", ["disk", ApertureSpec("polygon", 6), ApertureSpec("polygon", 5, 17.0)])
@pytest.mark.parametrize("radius", [0.0, 0.3, 0.7, 1.6, 4.0, 11.5])
def test_kernel_is_normalised_centred_and_odd(aperture, radius):
    kernel = aperture_kernel(radius, aperture, dtype=torch.float64)
    assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert kernel.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (kernel >= 0).all()
    half = kernel.shape[0] // 2
    assert kernel[half, half] == kernel.max()


def test_sub_pixel_radius_below_half_a_pixel_is_the_identity():
    for radius in (0.0, 0.2, 0.49):
        assert torch.equal(aperture_kernel(radius), torch.ones(1, 1))


def test_spread_grows_continuously_and_monotonically_with_the_radius():
    """Second moment of the kernel: no jumps between neighbouring sub-pixel radii, strictly increasing."""
    radii = [0.5 + 0.125 * i for i in range(40)]
    moments = []
    for radius in radii:
        kernel = aperture_kernel(radius, dtype=torch.float64)
        half = kernel.shape[0] // 2
        coords = torch.arange(-half, half + 1, dtype=torch.float64)
        moments.append(float((kernel * (coords[:, None] ** 2 + coords[None, :] ** 2)).sum()))
    steps = [b - a for a, b in itertools.pairwise(moments)]
    assert all(step > 0 for step in steps)
    # No jumps: each 1/8-pixel step moves the moment by at most a few times the ideal disk's change (R²/2)'.
    ideal = [((r + 0.125) ** 2 - r**2) / 2 for r in radii[:-1]]
    assert all(step < 2 * expected + 0.35 for step, expected in zip(steps, ideal))
    # A disk of radius R has second moment R²/2.
    assert moments[-1] == pytest.approx(radii[-1] ** 2 / 2, rel=0.05)


def test_disk_area_matches_pi_r_squared():
    kernel = aperture_kernel(9.0, dtype=torch.float64)
    area = 1.0 / kernel.max().item()  # interior pixels have weight 1/area
    assert area == pytest.approx(math.pi * 81, rel=0.02)


def test_polygon_has_vertices_at_the_radius_and_flat_edges_at_the_apothem():
    radius = 12.0
    kernel = aperture_kernel(radius, ApertureSpec("polygon", 6, rotation_deg=0.0), dtype=torch.float64)
    half = kernel.shape[0] // 2
    row = kernel[half] > 0  # along +x: a vertex at distance R
    column = kernel[:, half] > 0  # along +y: the middle of an edge at R·cos(30°)
    assert (row.sum().item() - 1) / 2 == pytest.approx(radius, abs=1.0)
    assert (column.sum().item() - 1) / 2 == pytest.approx(radius * math.cos(math.pi / 6), abs=1.0)


def test_polygon_rotation_by_one_sector_is_a_symmetry_and_half_a_sector_is_not():
    base = aperture_kernel(10.0, ApertureSpec("polygon", 6, 0.0))
    assert torch.allclose(base, aperture_kernel(10.0, ApertureSpec("polygon", 6, 60.0)), atol=1e-6)
    assert not torch.allclose(base, aperture_kernel(10.0, ApertureSpec("polygon", 6, 30.0)), atol=1e-3)


def test_aperture_names_and_mappings():
    assert as_aperture("disk") == ApertureSpec()
    assert as_aperture("polygon7") == ApertureSpec("polygon", 7)
    assert as_aperture({"shape": "polygon", "blades": 5, "rotation_deg": 10}) == ApertureSpec("polygon", 5, 10)


@pytest.mark.parametrize(
    "call",
    [
        lambda: aperture_kernel(-1.0),
        lambda: aperture_kernel(float("nan")),
        lambda: aperture_kernel(3.0, "triangle"),
        lambda: ApertureSpec("polygon", 2),
        lambda: as_aperture(3),
    ],
)
def test_bad_aperture_parameters_raise_parameter_error(call):
    with pytest.raises(ParameterError):
        call()
