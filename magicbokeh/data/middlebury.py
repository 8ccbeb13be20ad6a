"""Middlebury 2014 "motorcycle": a real photo with ground-truth disparity that ships offline with scikit-image.

The renderer benchmark, the README pictures and the demo's default sample read it through
:func:`load_stereo_motorcycle`, which returns it in the project's conventions (images in [0, 1], disparity in [0, 1]
with 1 = nearest).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MOTORCYCLE_FOCUS_BOX = (0.36, 0.46, 0.34, 0.44)
"""(top, bottom, left, right) fractions of the frame on the motorcycle's fuel tank, a natural focus target."""


def load_stereo_motorcycle(size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Middlebury 2014 "motorcycle" (left view) and its ground-truth disparity in our convention.

    Returns ``1×3×H×W`` in [0, 1] and ``1×1×H×W`` disparity in [0, 1] (1 = nearest). Invalid disparities (inf:
    occlusions and unmatched pixels) are filled along each row with the *smaller* of the nearest valid values to
    the left and right — an occluded pixel belongs to the farther surface — then the map is normalised between its
    0.5th and 99.5th percentiles (robust to the few outliers) and clipped. ``size`` (H, W) resizes both (bicubic
    image, bilinear disparity).
    """
    from skimage import data

    left, _, disparity = data.stereo_motorcycle()
    filled = fill_occlusions(np.asarray(disparity, dtype=np.float64))
    low, high = np.percentile(filled, [0.5, 99.5])
    normalised = np.clip((filled - low) / max(high - low, 1e-6), 0.0, 1.0)
    image = torch.from_numpy(np.ascontiguousarray(left)).permute(2, 0, 1)[None].float() / 255.0
    disparity_map = torch.from_numpy(normalised)[None, None].float()
    if size is not None:
        image = F.interpolate(image, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)
        disparity_map = F.interpolate(disparity_map, size=size, mode="bilinear", align_corners=False)
    return image, disparity_map


def fill_occlusions(disparity: np.ndarray) -> np.ndarray:
    valid = np.isfinite(disparity) & (disparity > 0)
    if not valid.any():
        raise ValueError("the motorcycle disparity has no valid pixel")
    height, width = disparity.shape
    columns = np.broadcast_to(np.arange(width), (height, width))
    # Index of the nearest valid pixel at or left of each pixel (−1 if none), and at or right of it (width if none).
    left_index = np.maximum.accumulate(np.where(valid, columns, -1), axis=1)
    right_index = np.minimum.accumulate(np.where(valid, columns, width)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(height)[:, None]
    fallback = float(disparity[valid].min())
    from_left = np.where(left_index >= 0, disparity[rows, left_index.clip(0, width - 1)], np.inf)
    from_right = np.where(right_index < width, disparity[rows, right_index.clip(0, width - 1)], np.inf)
    filled = np.minimum(from_left, from_right)
    filled = np.where(np.isfinite(filled), filled, fallback)
    return np.where(valid, disparity, filled)


def motorcycle_focus(disparity: torch.Tensor) -> float:
    """Median disparity on the fuel tank (the grid's focus point)."""
    top, bottom, left, right = MOTORCYCLE_FOCUS_BOX
    height, width = disparity.shape[-2:]
    box = disparity[..., int(top * height) : int(bottom * height), int(left * width) : int(right * width)]
    return float(box.median())
