"""Tiling: a pointwise network gives the untiled result (no seams) at any size; device inputs never exceed a tile."""

from __future__ import annotations

import pytest
import torch

from magicbokeh.errors import InvalidInputError, ParameterError
from magicbokeh.inference.tiling import (
    mirror_indices,
    overlap_disagreement,
    ramp_weights,
    release_weights,
    run_tiled,
    tile_starts,
)


class PointwiseModel:
    """A per-pixel network (no spatial context): tiling must not change its output. Records the tile shapes."""

    stride = 8

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, images: torch.Tensor, defocus: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(images.shape))
        return (images.square() * 0.7 + defocus * 0.3 + 0.01 * images.flip(1)).clamp(0, 1)


def _inputs(height: int, width: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(1, 3, height, width, generator=generator)
    defocus = torch.rand(1, 1, height, width, generator=generator)
    return images, defocus


def test_tile_starts_cover_the_axis_with_a_flush_last_tile():
    assert tile_starts(1000, 512, 256) == [0, 256, 488]
    assert tile_starts(768, 512, 256) == [0, 256]
    assert tile_starts(512, 512, 256) == [0]
    assert tile_starts(300, 512, 256) == [0]


def test_ramp_is_positive_and_cross_fades_to_one():
    ramp = ramp_weights(512, 256)
    assert ramp.min() > 0 and ramp.max() <= 1
    # Two tiles 256 apart: weights of the shared pixels sum to exactly one (a partition of unity).
    torch.testing.assert_close(ramp[256:] + ramp[:256], torch.ones(256, dtype=torch.float64))
    assert torch.equal(ramp_weights(64, 64), torch.ones(64, dtype=torch.float64))


def test_mirror_indices_reflect_beyond_one_image_width():
    assert mirror_indices(3, 9).tolist() == [0, 1, 2, 1, 0, 1, 2, 1, 0]
    assert mirror_indices(1, 4).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("blend", ["ramp", "release"])
@pytest.mark.parametrize(
    ("height", "width"),
    [(64, 64), (100, 37), (37, 211), (129, 161), (200, 96), (1, 70)],
    ids=["one-tile", "smaller-than-tile", "wide-odd", "odd-both", "tall", "one-row"],
)
def test_pointwise_model_tiled_equals_untiled(height, width, blend):
    images, defocus = _inputs(height, width)
    expected = PointwiseModel()(images, defocus)
    model = PointwiseModel()
    tiled = run_tiled(
        model, [images, defocus], out_channels=3, tile_size=64, tile_stride=32, model_stride=8, blend=blend
    )
    assert tiled.shape == expected.shape
    torch.testing.assert_close(tiled, expected, rtol=0, atol=2e-6)
    # Memory is bounded by the tile: the network never sees more than one 64-px tile per side per call; a side
    # that fits in one tile is padded only to the model stride.
    expected_h = 64 if height > 64 else -(-height // 8) * 8
    expected_w = 64 if width > 64 else -(-width // 8) * 8
    assert all(shape == (1, 3, expected_h, expected_w) for shape in model.shapes)


def test_small_images_are_padded_to_the_stride_not_to_a_tile():
    """A 20×36 image runs as one 24×40 piece; the former behaviour (pad_to_tile) ran a whole 64×64 tile."""
    images, defocus = _inputs(20, 36)
    small, padded = PointwiseModel(), PointwiseModel()
    out = run_tiled(small, [images, defocus], out_channels=3, tile_size=64, tile_stride=32, model_stride=8)
    old = run_tiled(
        padded, [images, defocus], out_channels=3, tile_size=64, tile_stride=32, model_stride=8, pad_to_tile=True
    )
    assert small.shapes == [(1, 3, 24, 40)] and padded.shapes == [(1, 3, 64, 64)]
    torch.testing.assert_close(out, old, rtol=0, atol=1e-6)


def test_release_weights_ramp_only_towards_neighbouring_tiles():
    up, down = torch.linspace(0, 1, 256), torch.linspace(1, 0, 256)
    first, last = release_weights(512, 256, 0, 768), release_weights(512, 256, 256, 768)
    assert torch.equal(first, torch.cat([torch.ones(256), down]))
    assert torch.equal(last, torch.cat([up, torch.ones(256)]))
    assert torch.equal(release_weights(512, 256, 256, 1024), torch.cat([up, down]))  # a middle tile
    assert torch.equal(release_weights(512, 256, 0, 512), torch.ones(512))  # the only tile


def test_release_and_ramp_weights_differ_where_the_last_tile_sits_flush():
    """Normalised 1-D weights of every tile on a 1562-px axis (tiles at 0, 256, …, 1024 and a flush 1050): equal
    up to the linspace spacing where tiles are 256 apart, up to ≈ 0.25 apart around the flush tile."""
    starts = tile_starts(1562, 512, 256)

    def normalised(weights_at):
        weights = torch.zeros(len(starts), 1562)
        for index, start in enumerate(starts):
            weights[index, start : start + 512] = weights_at(start)
        return weights / weights.sum(0)

    ramp = normalised(lambda start: ramp_weights(512, 256).float())
    release = normalised(lambda start: release_weights(512, 256, start, 1562))
    difference = (ramp - release).abs()
    assert difference[:, :1024].max() < 2.5e-3
    assert 0.2 < difference.max() < 0.25


def test_tile_batches_give_the_same_result_with_fewer_calls():
    images, defocus = _inputs(150, 190, seed=1)
    single, batched = PointwiseModel(), PointwiseModel()
    one = run_tiled(single, [images, defocus], out_channels=3, tile_size=64, tile_stride=48)
    four = run_tiled(batched, [images, defocus], out_channels=3, tile_size=64, tile_stride=48, tile_batch_size=4)
    torch.testing.assert_close(one, four, rtol=0, atol=1e-6)
    assert len(batched.shapes) == -(-len(single.shapes) // 4)
    assert max(shape[0] for shape in batched.shapes) == 4


def test_untiled_mode_pads_to_the_model_stride():
    images, defocus = _inputs(45, 70)
    model = PointwiseModel()
    out = run_tiled(model, [images, defocus], out_channels=3, tile_size=None, tile_stride=None, model_stride=8)
    assert model.shapes == [(1, 3, 48, 72)]
    torch.testing.assert_close(out, PointwiseModel()(images, defocus), rtol=0, atol=1e-6)


def test_spatial_model_blends_without_jumps():
    """A network that outputs its tile's mean: blending must give values between the tiles' means, smoothly."""

    def tile_mean(images, defocus):
        return images.mean(dim=(-2, -1), keepdim=True).expand_as(images).clone()

    images = torch.linspace(0, 1, 256).view(1, 1, 1, 256).expand(1, 3, 64, 256).contiguous()
    out = run_tiled(tile_mean, [images, images[:, :1]], out_channels=3, tile_size=64, tile_stride=32)
    row = out[0, 0, 0]
    assert torch.all(row[1:] >= row[:-1] - 1e-6)  # monotone: no seam step backwards
    assert (row[1:] - row[:-1]).abs().max() < 0.01  # no jump larger than the ramp slope allows


def test_bad_tiling_parameters_are_clear_errors():
    images, defocus = _inputs(32, 32)
    with pytest.raises(ParameterError, match="multiple of the model stride"):
        run_tiled(PointwiseModel(), [images, defocus], out_channels=3, tile_size=60, tile_stride=30, model_stride=8)
    with pytest.raises(ParameterError, match="tile.stride"):
        run_tiled(PointwiseModel(), [images, defocus], out_channels=3, tile_size=64, tile_stride=0)
    with pytest.raises(InvalidInputError, match="1×C×"):
        run_tiled(PointwiseModel(), [images, defocus[..., :16]], out_channels=3, tile_size=64, tile_stride=32)


def test_seam_error_is_zero_for_a_pointwise_model_and_positive_for_a_spatial_one():
    images, defocus = _inputs(64, 96)
    errors = overlap_disagreement(PointwiseModel(), [images, defocus], tile_size=64, tile_stride=32)
    assert errors["horizontal_max"] == 0.0 and "vertical_mean" not in errors

    def blur(images, defocus):
        return torch.nn.functional.avg_pool2d(images, 9, stride=1, padding=4, count_include_pad=False)

    assert overlap_disagreement(blur, [images, defocus], tile_size=64, tile_stride=32)["horizontal_max"] > 0
