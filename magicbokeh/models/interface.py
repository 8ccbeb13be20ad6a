"""The network's side of the tensor contract (DESIGN §3): the one place value ranges are converted.

Everything outside the model works on images in [0, 1]; the VAE, LPIPS and the ControlNet take ``pixel_values`` in
[−1, 1]. The defocus condition is the ``B×1×H×W`` map of :func:`magicbokeh.optics.defocus_map` repeated to three
channels and mapped to [−1, 1], as the release feeds it.
"""

from __future__ import annotations

import torch

from magicbokeh.errors import InvalidInputError


def images_to_pixel_values(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → [−1, 1] network ``pixel_values``."""
    return images * 2.0 - 1.0


def pixel_values_to_images(pixel_values: torch.Tensor) -> torch.Tensor:
    """[−1, 1] network output → [0, 1] images (clamped)."""
    return ((pixel_values + 1.0) * 0.5).clamp(0.0, 1.0)


def defocus_to_condition(defocus: torch.Tensor) -> torch.Tensor:
    """``B×1×H×W`` defocus in [0, 1] → the ControlNet condition ``B×3×H×W`` in [−1, 1]."""
    if defocus.ndim != 4 or defocus.shape[1] != 1:
        raise InvalidInputError(f"defocus must be B×1×H×W, got shape {tuple(defocus.shape)}")
    if not torch.isfinite(defocus).all():
        raise InvalidInputError("defocus contains NaN or Inf")
    return images_to_pixel_values(defocus.clamp(0.0, 1.0).expand(-1, 3, -1, -1))
