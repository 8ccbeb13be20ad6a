"""render_inputs (the CLI's body) with a per-pixel stand-in network: real photo files of awkward kinds and sizes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data, transform

from magicbokeh.data.io import read_image
from magicbokeh.errors import ConfigError, ImageReadError, InvalidInputError, MagicBokehError
from magicbokeh.inference.batch import LazyDepthModel, RenderOptions, focus_from_config, render_inputs
from magicbokeh.inference.pipeline import MagicBokehPipeline


class Darken(torch.nn.Module):
    stride = 8

    def forward(self, images, defocus):
        return images * (1 - 0.5 * defocus)


class RampDepth:
    def __init__(self):
        self.calls = 0

    def predict_disparity(self, images):
        self.calls += 1
        width = images.shape[-1]
        return torch.linspace(0, 1, width).view(1, 1, 1, width).expand(1, 1, images.shape[-2], width)


def _write(path, array):
    """Write an RGB (or gray) uint8/uint16 array with OpenCV (BGR on disk)."""
    cv2.imwrite(str(path), array[..., ::-1] if array.ndim == 3 else array)
    return path


@pytest.fixture
def photos(tmp_path):
    """Real photos (scikit-image data): grayscale, 16-bit, smaller than a tile, odd-sized."""
    folder = tmp_path / "photos"
    folder.mkdir()
    resize = lambda img, shape: transform.resize(img, shape, anti_aliasing=True)  # noqa: E731
    _write(folder / "gray.png", (resize(data.camera(), (40, 40)) * 255).astype(np.uint8))
    _write(folder / "deep16.png", (resize(data.coffee(), (36, 52)) * 65535).astype(np.uint16))
    _write(folder / "small.jpg", (resize(data.astronaut(), (12, 20)) * 255).astype(np.uint8))
    _write(folder / "odd.png", (resize(data.chelsea(), (37, 71)) * 255).astype(np.uint8))
    return folder


def _pipeline(depth=None):
    return MagicBokehPipeline(Darken(), depth or RampDepth(), tile_size=32, tile_stride=16, progress=False)


def test_folder_of_awkward_photos(photos, tmp_path):
    out = tmp_path / "out"
    written = render_inputs(_pipeline(), photos, out, RenderOptions(K=16, scale=2, focus=0.5, save_maps=True))
    assert sorted(p.name for p in written) == ["deep16.png", "gray.png", "odd.png", "small.png"]
    sizes = {p.stem: tuple(read_image(p).shape) for p in written}
    assert sizes == {"gray": (3, 80, 80), "deep16": (3, 72, 104), "small": (3, 24, 40), "odd": (3, 74, 142)}
    gray = read_image(out / "gray.png")
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # gray in, gray out
    assert (out / "odd_disparity.png").is_file() and (out / "odd_defocus.png").is_file()
    assert not list(out.glob(".*"))


def test_16_bit_output(photos, tmp_path):
    written = render_inputs(_pipeline(), photos / "deep16.png", tmp_path, RenderOptions(scale=1, bit_depth=16))
    assert cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_disparity_folder_and_a_bad_image_in_a_folder_run(photos, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    for stem, (h, w) in {"gray": (40, 40), "deep16": (36, 52), "small": (12, 20)}.items():
        np.save(maps / f"{stem}.npy", np.full((h, w), 0.25, np.float32))
    depth = RampDepth()
    with pytest.raises(MagicBokehError, match=r"1 of 4 images failed:\n  odd.png: no disparity map"):
        render_inputs(_pipeline(depth), photos, tmp_path / "out", RenderOptions(scale=1, focus=0.25), disparity=maps)
    assert depth.calls == 0  # every map came from the folder
    assert len(list((tmp_path / "out").glob("*.png"))) == 3  # the good images were still written
    # A uniform disparity at the focus: no defocus, so the network leaves the photo untouched (before colour fix).
    torch.testing.assert_close(
        read_image(tmp_path / "out" / "small.png"), read_image(photos / "small.jpg"), atol=1 / 255, rtol=0
    )


def test_missing_input_wrong_mask_and_empty_folder(photos, tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        render_inputs(_pipeline(), tmp_path / "missing.png", tmp_path, RenderOptions())
    mask = _write(tmp_path / "mask.png", np.full((10, 11), 255, np.uint8))
    with pytest.raises(InvalidInputError, match="mask of size 11×10"):
        render_inputs(_pipeline(), photos / "odd.png", tmp_path, RenderOptions(scale=1), mask=mask)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageReadError, match="holds no image"):
        render_inputs(_pipeline(), empty, tmp_path, RenderOptions())
    with pytest.raises(ConfigError, match="must be a folder"):
        render_inputs(_pipeline(), photos, tmp_path, RenderOptions(), mask=mask)


def test_a_soft_mask_counts_every_nonzero_pixel(photos, tmp_path):
    """A feathered subject matte (8-bit, 255 in the core, 254 → 1 over the edge): every pixel ≥ 1/255 is subject,
    as in the release; a one-half threshold would keep only the core and move the focus."""
    height, width = 37, 71
    disparity = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    np.save(tmp_path / "disparity.npy", disparity)
    mask = np.zeros((height, width), np.uint8)
    mask[:, 10:20] = 255
    mask[:, 20:45] = np.linspace(254, 1, 25).round().astype(np.uint8)  # the feathered edge, mostly below 128
    _write(tmp_path / "mask.png", mask)
    pipeline = _pipeline()
    chosen = []
    focus_disparity = pipeline.focus_disparity
    pipeline.focus_disparity = lambda *args, **kwargs: chosen.append(focus_disparity(*args, **kwargs)) or chosen[-1]
    render_inputs(
        pipeline, photos / "odd.png", tmp_path / "out", RenderOptions(scale=1), disparity=tmp_path / "disparity.npy",
        mask=tmp_path / "mask.png",
    )  # fmt: skip
    assert chosen == [pytest.approx(float(np.median(disparity[mask >= 1])), abs=1e-6)]
    assert abs(chosen[0] - float(np.median(disparity[mask >= 128]))) > 0.05  # the core alone would focus elsewhere


def test_focus_config_and_lazy_depth():
    assert focus_from_config(None, None) == "auto"
    assert focus_from_config(0.3, None) == 0.3
    assert focus_from_config(None, [4, 5]) == (4.0, 5.0)
    with pytest.raises(ConfigError, match="at most one"):
        focus_from_config(0.3, [4, 5])
    built = []
    lazy = LazyDepthModel(lambda: built.append(1) or RampDepth())
    assert not built
    lazy.predict_disparity(torch.zeros(1, 3, 4, 4))
    lazy.predict_disparity(torch.zeros(1, 3, 4, 4))
    assert built == [1]
