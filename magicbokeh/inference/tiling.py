"""Run a fixed-size network over an image of any size: overlapping tiles blended with linear-ramp weights.

Along each axis longer than ``tile_size``, tiles are ``tile_size`` long (512 in the official release), placed every
``tile_stride`` pixels (256), with one extra tile flush against the far edge when the length is not reached exactly.
An axis that fits in one tile is one piece, mirror-padded only up to a multiple of the model's stride (a 128 px
image runs at 128 px, not at 512: padding it to a full tile would cost 16× its own compute), and the padding is
cropped off again. Each tile's output is weighted by a separable ramp and the sum is divided by the summed weights,

    out(p) = Σ_t w_t(p) · f(x_t)(p) / Σ_t w_t(p),    w_t(p) = r_y(p_y − y_t) · r_x(p_x − x_t).

Two ramps (``blend``):

* ``"ramp"`` (ours): ``r(i) = min(1, (i + ½) / o, (T − i − ½) / o)`` on every side (T = tile length, o = T − stride
  = overlap), so two tiles overlapping by exactly ``o`` cross-fade with weights summing to one, every weight is
  > 0 (no pixel is dropped, the division is always defined), and a pointwise network gives the untiled result up
  to rounding.
* ``"release"`` (the official inference): ones, with ``linspace(0, 1, o)`` only on a side that touches another tile
  (a leading side when the tile does not start at 0, a trailing side when it does not end at the far edge). The
  first pixel of an inner tile gets weight 0; where the flush last tile overlaps its neighbour by more than ``o``
  the normalised weights differ from ``"ramp"`` by up to 0.25.

Memory on the device is bounded by ``tile_batch_size`` tiles whatever the image size: tiles are cut from a CPU copy,
results come back to a CPU float32 accumulator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from magicbokeh.errors import InvalidInputError, ParameterError
from magicbokeh.utils.progress import progress_bar

TileFunction = Callable[..., torch.Tensor]
"""``fn(*inputs) -> output``: each input ``N×C×h×w``, output ``N×C_out×h×w`` (same spatial size)."""

BLENDS = ("ramp", "release")


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Top-left offsets along one axis: every ``stride`` pixels, plus a last tile flush with the far edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def ramp_weights(tile: int, stride: int) -> torch.Tensor:
    """1-D linear ramp ``r(i)`` of the ``"ramp"`` blend (length ``tile``, float64, all > 0, peak 1)."""
    overlap = tile - stride
    if overlap <= 0:
        return torch.ones(tile, dtype=torch.float64)
    centres = torch.arange(tile, dtype=torch.float64) + 0.5
    return torch.minimum(torch.minimum(centres, tile - centres) / overlap, torch.ones(()))


def release_weights(tile: int, stride: int, start: int, length: int) -> torch.Tensor:
    """1-D weights of the ``"release"`` blend for the tile at ``start`` on an axis of ``length`` (float32).

    Ones, then ``linspace(0, 1, o)`` over the first ``o = tile − stride`` pixels when another tile lies before,
    and ``linspace(1, 0, o)`` over the last ``o`` when another lies after, as the release builds them.
    """
    weights = torch.ones(tile)
    overlap = tile - stride
    if overlap <= 0:
        return weights
    if start + tile < length:
        weights[-overlap:] = torch.linspace(1, 0, overlap)
    if start > 0:
        weights[:overlap] = torch.linspace(0, 1, overlap)
    return weights


def mirror_indices(length: int, target: int) -> torch.Tensor:
    """Indices ``0..target-1`` into an axis of ``length`` pixels, reflected (edge not repeated) as often as needed.

    Unlike ``F.pad(mode="reflect")`` this works when the padding exceeds the image (a 100-pixel side padded to 512).
    """
    index = torch.arange(target)
    if length == 1:
        return torch.zeros_like(index)
    period = 2 * length - 2
    folded = index % period
    return torch.where(folded < length, folded, period - folded)


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def check_tiling(tile_size: int | None, tile_stride: int | None, model_stride: int) -> None:
    """Raise :class:`ParameterError` for tile sizes the network cannot take or that leave gaps."""
    if tile_size is None:
        return
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size <= 0:
        raise ParameterError(f"tile.size must be a positive number of pixels (or null: untiled), got {tile_size!r}")
    if tile_size % model_stride:
        below = max(tile_size // model_stride, 1) * model_stride
        raise ParameterError(
            f"tile.size={tile_size} is not a multiple of the model stride {model_stride}; use e.g. tile.size={below}"
        )
    if isinstance(tile_stride, bool) or not isinstance(tile_stride, int) or tile_stride <= 0:
        raise ParameterError(f"tile.stride must be a positive number of pixels, got {tile_stride!r}")
    if tile_stride > tile_size:
        raise ParameterError(
            f"tile.stride={tile_stride} is larger than tile.size={tile_size}, which would leave gaps between tiles; "
            f"use tile.stride ≤ {tile_size} (e.g. {tile_size // 2})"
        )


def _axis_layout(length: int, tile: int | None, stride: int | None, model_stride: int, pad_to_tile: bool):
    """(tile length, stride, padded length) along one axis: one stride-padded piece when the axis fits in a tile."""
    if tile is None or (length <= tile and not pad_to_tile):
        piece = round_up(length, model_stride)
        return piece, piece, piece
    return tile, stride, max(length, tile)


def run_tiled(
    fn: TileFunction,
    inputs: Sequence[torch.Tensor],
    *,
    out_channels: int,
    tile_size: int | None = 512,
    tile_stride: int | None = 256,
    model_stride: int = 1,
    tile_batch_size: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    blend: str = "ramp",
    pad_to_tile: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Apply ``fn`` tile by tile to same-sized ``1×C×H×W`` CPU ``inputs``; returns a ``1×out_channels×H×W`` CPU float32.

    ``tile_size=None`` runs the whole image as one tile (padded to a multiple of ``model_stride``): the untiled
    reference, with memory growing with the image. Tiles are moved to ``device``/``dtype`` ``tile_batch_size`` at a
    time. ``blend`` picks the ramp (module docstring). ``pad_to_tile`` mirror-pads an axis shorter than a tile up to
    the full tile, as this function used to: kept as the baseline of ``scripts/benchmark.py inference``.
    """
    check_tiling(tile_size, tile_stride, model_stride)
    if blend not in BLENDS:
        raise ParameterError(f"blend must be one of {BLENDS}, got {blend!r}")
    if not inputs:
        raise InvalidInputError("run_tiled needs at least one input tensor")
    height, width = inputs[0].shape[-2:]
    for tensor in inputs:
        if tensor.ndim != 4 or tensor.shape[0] != 1 or tuple(tensor.shape[-2:]) != (height, width):
            raise InvalidInputError(
                f"tiled inputs must be 1×C×{height}×{width}; got {[tuple(t.shape) for t in inputs]}"
            )
    tile_h, stride_h, padded_h = _axis_layout(height, tile_size, tile_stride, model_stride, pad_to_tile)
    tile_w, stride_w, padded_w = _axis_layout(width, tile_size, tile_stride, model_stride, pad_to_tile)
    if (padded_h, padded_w) != (height, width):
        rows, cols = mirror_indices(height, padded_h), mirror_indices(width, padded_w)
        inputs = [t.index_select(-2, rows).index_select(-1, cols) for t in inputs]

    starts_y = tile_starts(padded_h, tile_h, stride_h)
    starts_x = tile_starts(padded_w, tile_w, stride_w)
    if blend == "ramp":
        ramp_y = {y: ramp_weights(tile_h, stride_h).to(torch.float32) for y in starts_y}
        ramp_x = {x: ramp_weights(tile_w, stride_w).to(torch.float32) for x in starts_x}
    else:
        ramp_y = {y: release_weights(tile_h, stride_h, y, padded_h) for y in starts_y}
        ramp_x = {x: release_weights(tile_w, stride_w, x, padded_w) for x in starts_x}
    output = torch.zeros(1, out_channels, padded_h, padded_w, dtype=torch.float32)
    weight_sum = torch.zeros(padded_h, padded_w, dtype=torch.float32)
    boxes = [(y, x) for y in starts_y for x in starts_x]

    quiet = not progress or len(boxes) == 1
    bar = progress_bar(total=len(boxes), desc="tiles", unit="tile", disable=quiet, leave=False)
    for first in range(0, len(boxes), tile_batch_size):
        batch = boxes[first : first + tile_batch_size]
        tile_inputs = [
            torch.cat([t[..., y : y + tile_h, x : x + tile_w] for y, x in batch]).to(device=device, dtype=dtype)
            for t in inputs
        ]
        result = fn(*tile_inputs)
        if result.shape != (len(batch), out_channels, tile_h, tile_w):
            raise InvalidInputError(
                f"the tile function returned shape {tuple(result.shape)}; expected "
                f"{(len(batch), out_channels, tile_h, tile_w)}"
            )
        result = result.to(device="cpu", dtype=torch.float32)
        for (y, x), tile_out in zip(batch, result):
            weight = ramp_y[y][:, None] * ramp_x[x][None, :]
            output[0, :, y : y + tile_h, x : x + tile_w].add_(tile_out * weight)
            weight_sum[y : y + tile_h, x : x + tile_w].add_(weight)
        bar.update(len(batch))
    bar.close()
    # The "release" ramps can leave a pixel no weight at all on grids the release never builds; it then stays 0.
    output.div_(weight_sum.masked_fill_(weight_sum == 0, 1.0))
    return output[..., :height, :width].contiguous()


def overlap_disagreement(
    fn: TileFunction,
    inputs: Sequence[torch.Tensor],
    *,
    tile_size: int,
    tile_stride: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Seam error: how much two horizontally/vertically adjacent tiles disagree where they overlap.

    Runs the first two tiles along each axis of ``1×C×H×W`` inputs (at least ``tile_size + tile_stride`` on that
    axis) and returns the mean and max absolute difference of their predictions over the shared pixels. A pointwise
    network gives 0; for a real network it measures what the ramp blending has to hide.
    """
    height, width = inputs[0].shape[-2:]
    errors: dict[str, float] = {}
    for axis, length in (("horizontal", width), ("vertical", height)):
        if length < tile_size + tile_stride or min(height, width) < tile_size:
            continue
        first = [t[..., :tile_size, :tile_size] for t in inputs]
        if axis == "horizontal":
            second = [t[..., :tile_size, tile_stride : tile_stride + tile_size] for t in inputs]
        else:
            second = [t[..., tile_stride : tile_stride + tile_size, :tile_size] for t in inputs]
        out_a = fn(*[t.to(device=device, dtype=dtype) for t in first]).float().cpu()
        out_b = fn(*[t.to(device=device, dtype=dtype) for t in second]).float().cpu()
        overlap = tile_size - tile_stride
        if axis == "horizontal":
            diff = (out_a[..., :, tile_stride:] - out_b[..., :, :overlap]).abs()
        else:
            diff = (out_a[..., tile_stride:, :] - out_b[..., :overlap, :]).abs()
        errors[f"{axis}_mean"] = float(diff.mean())
        errors[f"{axis}_max"] = float(diff.max())
    if not errors:
        raise InvalidInputError(f"seam error needs an image of at least {tile_size + tile_stride} px on one side")
    return errors
