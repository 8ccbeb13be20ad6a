"""Run a fixed-size network over an image of any size: overlapping tiles blended with linear-ramp weights.

Tiles are ``tile_size`` square (512 in the official release), placed every ``tile_stride`` pixels (256), with one
extra tile flush against the right/bottom edge when the size is not a multiple of the stride. Each tile's output is
weighted by a separable linear ramp and the sum is divided by the summed weights,

    out(p) = Σ_t w_t(p) · f(x_t)(p) / Σ_t w_t(p),    w_t(p) = r(p_y − y_t) · r(p_x − x_t),
    r(i) = min(1, (i + ½) / o, (T − i − ½) / o)       (T = tile size, o = T − stride = overlap)

so two tiles overlapping by exactly ``o`` pixels cross-fade with weights summing to one, every weight is > 0 (no pixel
is dropped, the division is always defined), and a pointwise network gives the untiled result up to rounding.

A side shorter than a tile is mirror-padded up to the tile size (the network is trained at 512² and its attention is
global within a tile, so a full tile is what it expects), and the padding is cropped off again. Memory on the
device is bounded by ``tile_batch_size`` tiles whatever the image size: tiles are cut from a CPU copy, results come
back to a CPU float32 accumulator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from magicbokeh.errors import InvalidInputError, ParameterError

TileFunction = Callable[..., torch.Tensor]
"""``fn(*inputs) -> output``: each input ``N×C×h×w``, output ``N×C_out×h×w`` (same spatial size)."""


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Top-left offsets along one axis: every ``stride`` pixels, plus a last tile flush with the far edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def ramp_weights(tile: int, stride: int) -> torch.Tensor:
    """1-D linear ramp ``r(i)`` of the module docstring (length ``tile``, float64, all > 0, peak 1)."""
    overlap = tile - stride
    if overlap <= 0:
        return torch.ones(tile, dtype=torch.float64)
    centres = torch.arange(tile, dtype=torch.float64) + 0.5
    return torch.minimum(torch.minimum(centres, tile - centres) / overlap, torch.ones(()))


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
    if tile_size <= 0 or tile_size % model_stride:
        raise ParameterError(
            f"tile.size must be a positive multiple of the model stride {model_stride}, got {tile_size}"
        )
    if tile_stride is None or not 0 < tile_stride <= tile_size:
        raise ParameterError(f"tile.stride must be in (0, tile.size={tile_size}], got {tile_stride}")


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
    progress: bool = False,
) -> torch.Tensor:
    """Apply ``fn`` tile by tile to same-sized ``1×C×H×W`` CPU ``inputs``; returns a ``1×out_channels×H×W`` CPU float32.

    ``tile_size=None`` runs the whole image as one tile (padded to a multiple of ``model_stride``): the untiled
    reference, with memory growing with the image. Tiles are moved to ``device``/``dtype`` ``tile_batch_size`` at a
    time.
    """
    check_tiling(tile_size, tile_stride, model_stride)
    if not inputs:
        raise InvalidInputError("run_tiled needs at least one input tensor")
    height, width = inputs[0].shape[-2:]
    for tensor in inputs:
        if tensor.ndim != 4 or tensor.shape[0] != 1 or tuple(tensor.shape[-2:]) != (height, width):
            raise InvalidInputError(
                f"tiled inputs must be 1×C×{height}×{width}; got {[tuple(t.shape) for t in inputs]}"
            )
    if tile_size is None:
        tile_h, tile_w = round_up(height, model_stride), round_up(width, model_stride)
        stride_h, stride_w = tile_h, tile_w
    else:
        tile_h = tile_w = tile_size
        stride_h = stride_w = tile_stride
    # Mirror-pad a short side up to one tile; the crop at the end removes it again.
    padded_h, padded_w = max(height, tile_h), max(width, tile_w)
    if (padded_h, padded_w) != (height, width):
        rows, cols = mirror_indices(height, padded_h), mirror_indices(width, padded_w)
        inputs = [t.index_select(-2, rows).index_select(-1, cols) for t in inputs]

    ramp_y = ramp_weights(tile_h, stride_h).to(torch.float32)
    ramp_x = ramp_weights(tile_w, stride_w).to(torch.float32)
    weight = ramp_y[:, None] * ramp_x[None, :]
    output = torch.zeros(1, out_channels, padded_h, padded_w, dtype=torch.float32)
    weight_sum = torch.zeros(padded_h, padded_w, dtype=torch.float32)
    boxes = [(y, x) for y in tile_starts(padded_h, tile_h, stride_h) for x in tile_starts(padded_w, tile_w, stride_w)]

    bar = tqdm(total=len(boxes), desc="tiles", unit="tile", disable=not progress or len(boxes) == 1, leave=False)
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
            output[0, :, y : y + tile_h, x : x + tile_w].add_(tile_out * weight)
            weight_sum[y : y + tile_h, x : x + tile_w].add_(weight)
        bar.update(len(batch))
    bar.close()
    output.div_(weight_sum)
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
