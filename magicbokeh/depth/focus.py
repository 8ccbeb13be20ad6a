"""Focus selection: the focus disparity d_f from a subject mask, a clicked point, or automatically.

The official inference takes the median of d inside a salient-object mask (every nonzero mask pixel counts); its
demo takes d at the clicked pixel. A single pixel is fragile (it may sit on a depth edge, or on noise), so
:func:`focus_from_point` takes the median of the depth-edge-free surface under the click instead;
:func:`focus_at_pixel` and ``focus_from_mask(..., lower_median=True)`` are the release's own rules
(``preset=release`` of the inference pipeline).

Shapes: ``disparity`` is ``1×H×W`` (one map → a float) or ``B×1×H×W`` (→ a ``B`` tensor), values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from magicbokeh.errors import ConfigError, EmptyMaskError, InvalidInputError, missing_weights

# A jump of more than this (in [0, 1] disparity) between 4-neighbours is a depth edge.
DEFAULT_EDGE_THRESHOLD = 0.05
DEFAULT_WINDOW = 9
# Centre prior of the automatic fallback: Gaussian with σ = this fraction of each image side. 1/8 makes it a central
# autofocus zone: a subject spanning the middle 40 % of each side already holds ~80 % of the prior's weight.
CENTRE_SIGMA_FRACTION = 0.125
SALIENCY_THRESHOLD = 0.5

SaliencyModel = Callable[[torch.Tensor], torch.Tensor]
SALIENCY_SOURCE = (
    "a torch.export archive (.pt2, torch.export.save) of a salient-object detector such as LDF or U2-Net that "
    "maps B×3×H×W images in [0, 1] to B×1×h×w saliency in [0, 1]"
)


def _as_batch(disparity: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``1×H×W`` or ``B×1×H×W`` → (``B×1×H×W``, whether the input was a single map)."""
    if not isinstance(disparity, torch.Tensor):
        raise InvalidInputError(f"disparity must be a tensor, got {type(disparity).__name__}")
    if disparity.ndim == 3 and disparity.shape[0] == 1:
        batch, single = disparity[None], True
    elif disparity.ndim == 4 and disparity.shape[1] == 1:
        batch, single = disparity, False
    else:
        raise InvalidInputError(f"disparity must be 1×H×W or B×1×H×W, got shape {tuple(disparity.shape)}")
    if not torch.isfinite(batch).all():
        raise InvalidInputError("disparity contains NaN or Inf")
    return batch.float(), single


def _result(values: list[float] | torch.Tensor, single: bool, device: torch.device) -> float | torch.Tensor:
    values = torch.as_tensor(values, dtype=torch.float32, device=device)
    return float(values[0]) if single else values


def _median(values: torch.Tensor) -> torch.Tensor:
    """Median of a 1-D tensor, averaging the two middle values for even counts (as numpy does)."""
    ordered = values.sort().values
    n = ordered.numel()
    return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])


def _weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The value where the cumulative weight (in value order) first reaches half the total."""
    order = values.argsort()
    cumulative = weights[order].cumsum(0)
    index = torch.searchsorted(cumulative, cumulative[-1] * 0.5)
    return values[order][index.clamp(max=values.numel() - 1)]


def _mask_batch(mask: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
    """Bring a mask (``H×W``, ``1×H×W``, ``B×1×H×W``; bool or numeric, nonzero = subject) to ``B×1×H×W`` bool."""
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(np.asarray(mask))
    batch, _, height, width = disparity.shape
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None] if mask.shape[0] == batch and batch > 1 else mask[None]
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (height, width):
        raise InvalidInputError(
            f"mask of shape {tuple(mask.shape)} does not match the disparity map of size {height}×{width}; "
            "resize the mask to the disparity resolution first"
        )
    if mask.shape[0] not in (1, batch):
        raise InvalidInputError(f"mask batch {mask.shape[0]} does not match disparity batch {batch}")
    return (mask.to(disparity.device) != 0).expand(batch, 1, height, width)


def focus_from_mask(disparity: torch.Tensor, mask: torch.Tensor, *, lower_median: bool = False) -> float | torch.Tensor:
    """Median disparity inside a subject mask (every nonzero mask pixel counts, as in the official code).

    For an even count the median is the mean of the two middle values (numpy's), or with ``lower_median`` the
    lower of them (``torch.median``, what the release uses).

    Raises:
        EmptyMaskError: the mask (of any image in the batch) selects no pixel.
        InvalidInputError: shapes do not match, or the disparity is not finite.
    """
    batch, single = _as_batch(disparity)
    masks = _mask_batch(mask, batch)
    values = []
    for index in range(batch.shape[0]):
        selected = batch[index][masks[index]]
        if selected.numel() == 0:
            where = "" if single else f" of image {index}"
            raise EmptyMaskError(f"the subject mask{where} is empty: select at least one pixel, or focus by point")
        values.append(selected.median() if lower_median else _median(selected))
    return _result(torch.stack(values), single, batch.device)


def depth_edges(disparity: torch.Tensor, threshold: float = DEFAULT_EDGE_THRESHOLD) -> torch.Tensor:
    """Bool ``B×1×H×W``: pixels whose disparity differs from a 4-neighbour by more than ``threshold``."""
    padded = F.pad(disparity, (1, 1, 1, 1), mode="replicate")
    centre = padded[..., 1:-1, 1:-1]
    jumps = torch.stack(
        [
            (padded[..., :-2, 1:-1] - centre).abs(),
            (padded[..., 2:, 1:-1] - centre).abs(),
            (padded[..., 1:-1, :-2] - centre).abs(),
            (padded[..., 1:-1, 2:] - centre).abs(),
        ]
    )
    return jumps.amax(dim=0) > threshold


def _point_focus(disparity: torch.Tensor, x: int, y: int, window: int, edge_threshold: float) -> torch.Tensor:
    """``disparity``: ``1×H×W``. Median of the edge-free region connected to the click inside the window."""
    height, width = disparity.shape[-2:]
    half = window // 2
    top, left = max(y - half, 0), max(x - half, 0)
    patch = disparity[0, top : min(y + half + 1, height), left : min(x + half + 1, width)]
    edges = depth_edges(patch[None, None], edge_threshold)[0, 0].cpu().numpy()
    smooth = ~edges
    if not smooth.any():
        # The whole window is edges (very fine texture): no surface to prefer, so take the plain median.
        return _median(patch.flatten())
    # Anchor: the edge-free pixel nearest to the click (the click itself when it is not on an edge).
    rows, cols = np.nonzero(smooth)
    nearest = np.argmin((rows - (y - top)) ** 2 + (cols - (x - left)) ** 2)
    labels, _ = ndimage.label(smooth)
    surface = torch.from_numpy(labels == labels[rows[nearest], cols[nearest]]).to(patch.device)
    return _median(patch[surface])


def focus_from_point(
    disparity: torch.Tensor,
    point: Sequence[float] | Sequence[Sequence[float]],
    window: int = DEFAULT_WINDOW,
    edge_threshold: float = DEFAULT_EDGE_THRESHOLD,
) -> float | torch.Tensor:
    """Focus disparity at a clicked point, robust to noise and to clicks on depth edges.

    Inside a ``window×window`` box around the point, pixels on a depth edge (a jump > ``edge_threshold`` to a
    4-neighbour) are removed; the result is the median of the remaining region that is connected to the click
    (or to the edge-free pixel nearest it). So a click on a subject's outline focuses the surface it touches,
    never an average of foreground and background.

    Args:
        disparity: ``1×H×W`` or ``B×1×H×W``.
        point: ``(x, y)`` in pixels (x = column, y = row; integers are pixel centres), rounded to the nearest
            pixel; for a batch, one point for every image or a sequence of ``B`` points.
        window: odd box size in pixels (clipped at the image border).

    Raises:
        InvalidInputError: a point outside the image, a bad window, or a bad disparity map.
    """
    batch, single = _as_batch(disparity)
    if int(window) != window or window < 1 or window % 2 == 0:
        raise InvalidInputError(f"focus window must be a positive odd number of pixels, got {window}")
    points = _points_for_batch(point, batch.shape[0])
    height, width = batch.shape[-2:]
    values = []
    for index, (x, y) in enumerate(points):
        col, row = round(float(x)), round(float(y))
        if not (0 <= col < width and 0 <= row < height):
            raise InvalidInputError(
                f"focus point ({x}, {y}) lies outside the {width}×{height} image (x in [0, {width - 1}], "
                f"y in [0, {height - 1}])"
            )
        values.append(_point_focus(batch[index], col, row, int(window), edge_threshold))
    return _result(torch.stack(values), single, batch.device)


def focus_at_pixel(disparity: torch.Tensor, point: Sequence[float] | Sequence[Sequence[float]]) -> float | torch.Tensor:
    """The release demo's click rule: the disparity of the pixel ``(int(x), int(y))``, coordinates truncated.

    Raises:
        InvalidInputError: a point outside the image, or a bad disparity map.
    """
    batch, single = _as_batch(disparity)
    points = _points_for_batch(point, batch.shape[0])
    height, width = batch.shape[-2:]
    values = []
    for index, (x, y) in enumerate(points):
        col, row = int(x), int(y)
        if not (0 <= x < width and 0 <= y < height):
            raise InvalidInputError(
                f"focus point ({x:g}, {y:g}) lies outside the {width}×{height} image (x in [0, {width}), "
                f"y in [0, {height}))"
            )
        values.append(batch[index, 0, row, col])
    return _result(torch.stack(values), single, batch.device)


def _points_for_batch(point, batch: int) -> list[tuple[float, float]]:
    array = np.asarray(point, dtype=np.float64)
    if array.shape == (2,):
        return [tuple(array)] * batch
    if array.shape == (batch, 2):
        return [tuple(p) for p in array]
    raise InvalidInputError(f"focus point must be (x, y) or {batch} (x, y) pairs, got shape {array.shape}")


def centre_weights(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``H×W`` Gaussian centre prior, σ = ``CENTRE_SIGMA_FRACTION`` of each side (peak 1 at the centre)."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height - 0.5
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width - 0.5
    sigma = CENTRE_SIGMA_FRACTION
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))


def focus_auto(
    disparity: torch.Tensor,
    image: torch.Tensor | None = None,
    saliency_model: SaliencyModel | None = None,
    edge_threshold: float = DEFAULT_EDGE_THRESHOLD,
) -> float | torch.Tensor:
    """Automatic focus: the subject found by a saliency model, else a centre-weighted guess.

    * With ``saliency_model`` (a callable ``B×3×H×W`` [0, 1] images → ``B×1×h×w`` saliency in [0, 1], e.g. from
      :func:`load_saliency_model`): the median disparity inside ``saliency > 0.5`` (resized to the disparity), as the
      official inference does with LDF. An image whose saliency is empty falls back to the rule below.
    * Without one (documented fallback): photographers frame the subject near the centre, so the focus is the
      **weighted median** of the disparity with a Gaussian centre prior (σ = 1/8 of each side), depth-edge pixels
      excluded (their disparity belongs to neither surface).

    Raises:
        InvalidInputError: ``saliency_model`` without ``image``, or shapes that do not match.
    """
    batch, single = _as_batch(disparity)
    height, width = batch.shape[-2:]
    masks = None
    if saliency_model is not None:
        if image is None:
            raise InvalidInputError("focus_auto with a saliency model needs the image as well as the disparity")
        images = image[None] if image.ndim == 3 else image
        if images.ndim != 4 or images.shape[0] != batch.shape[0] or images.shape[1] != 3:
            raise InvalidInputError(
                f"image of shape {tuple(image.shape)} does not match disparity of shape {tuple(disparity.shape)}"
            )
        with torch.no_grad():
            saliency = saliency_model(images).float()
        saliency = F.interpolate(saliency, size=(height, width), mode="bilinear", align_corners=False)
        masks = saliency.to(batch.device) > SALIENCY_THRESHOLD
    prior = centre_weights(height, width, batch.device)
    edges = depth_edges(batch, edge_threshold)
    values = []
    for index in range(batch.shape[0]):
        if masks is not None and masks[index].any():
            values.append(_median(batch[index][masks[index]]))
            continue
        weights = prior * (~edges[index, 0]).float()
        if weights.sum() <= 0:  # every pixel is an edge: use the prior alone
            weights = prior
        values.append(_weighted_median(batch[index, 0].flatten(), weights.flatten()))
    return _result(torch.stack(values), single, batch.device)


def load_saliency_model(
    path: str | Path | None, config_key: str = "paths.saliency", device: torch.device | str | None = None
) -> SaliencyModel | None:
    """Load the optional saliency model for :func:`focus_auto` (``None`` → ``None``: the centre-weighted fallback).

    The model is a ``torch.export`` archive (``.pt2``), so any detector can be plugged in without its source code
    and nothing is unpickled. Its contract: ``B×3×H×W`` [0, 1] images → ``B×1×h×w`` saliency in [0, 1]; export it
    with dynamic batch/height/width (``Dim.AUTO``), or resize inside the exported module.
    """
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise missing_weights(str(path), config_key, SALIENCY_SOURCE)
    try:
        module = torch.export.load(str(path)).module()
    except Exception as error:  # a corrupt or foreign file: the same fix for the user either way
        raise ConfigError(
            f"saliency model '{path}' is not a torch.export archive ({type(error).__name__}); {SALIENCY_SOURCE}"
        ) from error
    return module.to(device) if device is not None else module
