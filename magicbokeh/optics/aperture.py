"""Aperture shapes and their point-spread kernels (soft-edged disk, regular n-blade polygon).

A defocused point images to the shape of the lens aperture scaled to the circle of confusion. The kernel is the
fraction of each pixel covered by that shape, approximated from the signed distance ``sd`` of the pixel centre to
the shape boundary as ``coverage = clamp(0.5 − sd, 0, 1)`` (a one-pixel-wide linear ramp, exact for a straight
edge through the pixel). This keeps sub-pixel radii meaningful: the kernel grows continuously from a single pixel
(radius < 0.5) to a disk, so blur strength is monotone in the radius and no banding appears between radii.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from magicbokeh.errors import ParameterError

APERTURE_SHAPES = ("disk", "polygon")


@dataclass(frozen=True)
class ApertureSpec:
    """Shape of the aperture.

    ``shape``: ``"disk"`` or ``"polygon"`` (a regular polygon with ``blades`` sides inscribed in the circle of
    confusion, i.e. the radius is the distance to a vertex). ``rotation_deg``: angle of the first vertex from the
    +x axis towards +y (image rows point down, so positive angles turn clockwise on screen).
    """

    shape: str = "disk"
    blades: int = 6
    rotation_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in APERTURE_SHAPES:
            raise ParameterError(f"aperture shape must be one of {APERTURE_SHAPES}, got {self.shape!r}")
        if self.shape == "polygon" and (int(self.blades) != self.blades or self.blades < 3):
            raise ParameterError(f"a polygon aperture needs an integer number of blades ≥ 3, got {self.blades}")
        if not math.isfinite(self.rotation_deg):
            raise ParameterError(f"aperture rotation_deg must be finite, got {self.rotation_deg}")


def as_aperture(aperture: str | ApertureSpec | Mapping) -> ApertureSpec:
    """Accept ``"disk"``, ``"polygon"``, ``"hexagon"``-style names (``"polygon6"``), a mapping or a spec."""
    if isinstance(aperture, ApertureSpec):
        return aperture
    if isinstance(aperture, Mapping):
        return ApertureSpec(**dict(aperture))
    if isinstance(aperture, str):
        if aperture.startswith("polygon") and aperture[len("polygon") :].isdigit():
            return ApertureSpec(shape="polygon", blades=int(aperture[len("polygon") :]))
        return ApertureSpec(shape=aperture)
    raise ParameterError(f"aperture must be a name, a mapping or an ApertureSpec, got {type(aperture).__name__}")


def kernel_half_size(radius_px: float) -> int:
    """Half width of the kernel grid: only pixels closer than ``radius + 0.5`` to the centre get coverage."""
    return math.ceil(radius_px + 0.5) - 1


def aperture_kernel(
    radius_px: float,
    aperture: str | ApertureSpec | Mapping = "disk",
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Normalised ``(2h+1)×(2h+1)`` kernel of the aperture scaled to circle-of-confusion radius ``radius_px``.

    ``h = ceil(radius + 0.5) − 1``; radius ≤ 0.5 gives the 1×1 identity kernel. The kernel sums to 1 (energy is
    conserved in linear light) and is centred on the middle pixel.
    """
    radius = float(radius_px)
    if not (math.isfinite(radius) and radius >= 0):
        raise ParameterError(f"circle-of-confusion radius must be a finite number ≥ 0 pixels, got {radius:g}")
    spec = as_aperture(aperture)
    half = kernel_half_size(radius)
    if half == 0:
        return torch.ones(1, 1, dtype=dtype, device=device)
    # Geometry in float64 whatever the output dtype, so float32 and float64 renders use the same kernel.
    coords = torch.arange(-half, half + 1, dtype=torch.float64, device=device)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    if spec.shape == "disk":
        signed_distance = torch.hypot(x, y) - radius
    else:
        # Regular n-gon with circumradius R: inside ⇔ p·n_k ≤ R·cos(π/n) for every edge normal n_k; the largest
        # excess over the apothem is the signed distance (exact inside and along the edges, a bound near corners).
        n = int(spec.blades)
        first_vertex = math.radians(spec.rotation_deg)
        normals = first_vertex + math.pi / n + 2 * math.pi * torch.arange(n, dtype=torch.float64, device=device) / n
        projections = x[..., None] * torch.cos(normals) + y[..., None] * torch.sin(normals)
        signed_distance = projections.amax(dim=-1) - radius * math.cos(math.pi / n)
    coverage = (0.5 - signed_distance).clamp(0.0, 1.0)
    return (coverage / coverage.sum()).to(dtype)
