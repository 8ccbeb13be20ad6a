"""I/O on real files written in the test: every supported format, and every kind of bad file."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from magicbokeh.data.io import (
    _apply_exif_orientation,
    list_images,
    normalize_disparity,
    read_disparity,
    read_image,
    write_disparity,
    write_image,
)
from magicbokeh.errors import ImageReadError, ImageWriteError, InvalidInputError, MagicBokehError


@pytest.fixture
def rgb8() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(13, 17, 3), dtype=np.uint8)


def _as_tensor(array_uint: np.ndarray, maximum: float) -> torch.Tensor:
    return torch.from_numpy(array_uint.astype(np.float32) / maximum).permute(2, 0, 1)


def test_png_8bit_rgb_exact(tmp_path, rgb8):
    Image.fromarray(rgb8).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.dtype == torch.float32 and image.shape == (3, 13, 17)
    torch.testing.assert_close(image, _as_tensor(rgb8, 255.0), rtol=0, atol=0)


def test_png_16bit_rgb_keeps_precision(tmp_path):
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, size=(9, 11, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    image = read_image(tmp_path / "a.png")
    torch.testing.assert_close(image, _as_tensor(rgb16, 65535.0), rtol=0, atol=1e-7)
    # more than 256 distinct levels survive: not silently truncated to 8 bits
    assert len(torch.unique(image)) > 256


def test_png_16bit_gray_becomes_rgb(tmp_path):
    gray16 = (np.arange(7 * 5, dtype=np.uint16).reshape(7, 5) * 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), gray16)
    image = read_image(tmp_path / "g.png")
    assert image.shape == (3, 7, 5)
    torch.testing.assert_close(image[0], torch.from_numpy(gray16.astype(np.float32) / 65535.0))
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_grayscale_8bit_becomes_rgb(tmp_path, rgb8):
    Image.fromarray(rgb8[..., 0]).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (3, 13, 17)
    torch.testing.assert_close(image[2], torch.from_numpy(rgb8[..., 0].astype(np.float32) / 255.0))


def test_jpeg_close_to_source(tmp_path, rgb8):
    smooth = cv2.GaussianBlur(rgb8, (5, 5), 2)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=98)
    image = read_image(tmp_path / "a.jpg")
    assert image.shape == (3, 13, 17)
    assert (image - _as_tensor(smooth, 255.0)).abs().mean() < 0.02


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_applied(tmp_path, orientation):
    # a tall image with a bright top-left block: its position after transposition identifies the orientation
    array = np.zeros((40, 24, 3), dtype=np.uint8)
    array[:10, :6] = 255
    pil = Image.fromarray(array)
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.save(tmp_path / "o.jpg", exif=exif, quality=100)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.jpg")), dtype=np.float32) / 255.0
    image = read_image(tmp_path / "o.jpg")
    assert image.shape[1:] == expected.shape[:2]
    if orientation in (5, 6, 7, 8):
        assert image.shape[1:] == (24, 40)
    torch.testing.assert_close(image.permute(1, 2, 0).numpy(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_manual_orientation_matches_pil(orientation):
    """The 16-bit path rotates with numpy; it must agree with PIL's exif_transpose for every orientation."""
    array = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3)
    pil = Image.fromarray(array)
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(pil))
    np.testing.assert_array_equal(_apply_exif_orientation(array, orientation), expected)


def test_tiff_8_and_16_bit(tmp_path, rgb8):
    Image.fromarray(rgb8).save(tmp_path / "a.tif")
    torch.testing.assert_close(read_image(tmp_path / "a.tif"), _as_tensor(rgb8, 255.0), rtol=0, atol=0)
    rgb16 = rgb8.astype(np.uint16) * 257 + 3
    cv2.imwrite(str(tmp_path / "b.tiff"), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    torch.testing.assert_close(read_image(tmp_path / "b.tiff"), _as_tensor(rgb16, 65535.0), rtol=0, atol=1e-7)


def test_rgba_drop_warns_and_composite_blends(tmp_path, rgb8):
    alpha = np.full((13, 17, 1), 255, dtype=np.uint8)
    alpha[:5] = 0
    Image.fromarray(np.concatenate([rgb8, alpha], axis=2), mode="RGBA").save(tmp_path / "a.png")
    with pytest.warns(UserWarning, match="alpha channel dropped"):
        dropped = read_image(tmp_path / "a.png")
    torch.testing.assert_close(dropped, _as_tensor(rgb8, 255.0), rtol=0, atol=0)
    composited = read_image(tmp_path / "a.png", alpha="composite", background=(1.0, 0.0, 0.0))
    assert torch.equal(composited[:, :5], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 5, 17))
    torch.testing.assert_close(composited[:, 5:], _as_tensor(rgb8, 255.0)[:, 5:], rtol=0, atol=0)


def test_opaque_rgba_does_not_warn(tmp_path, rgb8):
    alpha = np.full((13, 17, 1), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb8, alpha], axis=2), mode="RGBA").save(tmp_path / "a.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(tmp_path / "a.png")


def test_cmyk_jpeg_converted_to_rgb(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)  # pure red in CMYK
    image = read_image(tmp_path / "c.jpg")
    assert image.shape == (3, 6, 8)
    assert image[0].mean() > 0.9 and image[1].mean() < 0.1 and image[2].mean() < 0.1


def test_palette_png(tmp_path, rgb8):
    Image.fromarray(rgb8).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (3, 13, 17)


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"this is not an image at all" * 10), "not a readable image"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
    ids=["missing", "empty", "garbage", "directory"],
)
def test_bad_files_raise_clear_errors(tmp_path, setup, match):
    target = tmp_path / "bad.png"
    setup(target)
    with pytest.raises(ImageReadError, match=match) as info:
        read_image(target)
    assert "bad.png" in str(info.value)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file_raises(tmp_path, rgb8, suffix):
    big = np.tile(rgb8, (8, 8, 1))
    Image.fromarray(big).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=f"cut{suffix}"):
        read_image(tmp_path / f"cut{suffix}")


def test_float_tiff_with_nan_rejected(tmp_path):
    array = np.full((4, 5), 0.5, dtype=np.float32)
    array[1, 2] = np.nan
    Image.fromarray(array, mode="F").save(tmp_path / "n.tif")
    with pytest.raises(InvalidInputError, match="NaN"):
        read_image(tmp_path / "n.tif")


def test_errors_are_one_hierarchy():
    assert issubclass(ImageReadError, MagicBokehError) and issubclass(InvalidInputError, MagicBokehError)


# ---------------------------------------------------------------------------------------------------- disparity
def test_disparity_npy_png8_png16(tmp_path):
    values = np.linspace(0, 1, 20 * 10, dtype=np.float32).reshape(10, 20)
    np.save(tmp_path / "d.npy", values)
    torch.testing.assert_close(read_disparity(tmp_path / "d.npy"), torch.from_numpy(values)[None])
    cv2.imwrite(str(tmp_path / "d8.png"), (values * 255).round().astype(np.uint8))
    assert (read_disparity(tmp_path / "d8.png") - torch.from_numpy(values)).abs().max() <= 0.5 / 255 + 1e-6
    cv2.imwrite(str(tmp_path / "d16.png"), (values * 65535).round().astype(np.uint16))
    assert (read_disparity(tmp_path / "d16.png") - torch.from_numpy(values)).abs().max() <= 0.5 / 65535 + 1e-7


def test_disparity_out_of_range_needs_normalize(tmp_path):
    np.save(tmp_path / "raw.npy", np.array([[10.0, 20.0], [30.0, 50.0]], dtype=np.float32))
    with pytest.raises(InvalidInputError, match="normalize=True"):
        read_disparity(tmp_path / "raw.npy")
    disparity = read_disparity(tmp_path / "raw.npy", normalize=True)
    torch.testing.assert_close(disparity, torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]))


def test_depth_inverted_to_disparity(tmp_path):
    np.save(tmp_path / "depth.npy", np.array([[1.0, 2.0], [4.0, 4.0]], dtype=np.float32))
    disparity = read_disparity(tmp_path / "depth.npy", is_depth=True)
    assert disparity[0, 0, 0] == 1.0 and disparity[0, 1, 1] == 0.0  # nearest = largest disparity


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (np.array([[np.nan, 0.5]], dtype=np.float32), "NaN"),
        (np.zeros((2, 3, 4), dtype=np.float32), "expected H×W"),
        (np.array(["a", "b"]), "non-numeric"),
    ],
    ids=["nan", "3d", "strings"],
)
def test_disparity_bad_content(tmp_path, content, match):
    np.save(tmp_path / "d.npy", content)
    with pytest.raises(MagicBokehError, match=match):
        read_disparity(tmp_path / "d.npy")


def test_disparity_colour_png_and_bad_extension(tmp_path, rgb8):
    cv2.imwrite(str(tmp_path / "c.png"), rgb8)
    with pytest.raises(ImageReadError, match="colour image"):
        read_disparity(tmp_path / "c.png")
    (tmp_path / "d.exr").write_bytes(b"x")
    with pytest.raises(ImageReadError, match="unsupported extension"):
        read_disparity(tmp_path / "d.exr")
    (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ImageReadError, match="broken.npy"):
        read_disparity(tmp_path / "broken.npy")


def test_normalize_disparity_per_map():
    batch = torch.stack([torch.tensor([[[2.0, 4.0]]]), torch.tensor([[[5.0, 5.0]]])])
    normalized = normalize_disparity(batch)
    torch.testing.assert_close(normalized[0], torch.tensor([[[0.0, 1.0]]]))
    assert torch.equal(normalized[1], torch.zeros(1, 1, 2))


# ---------------------------------------------------------------------------------------------------- writing
@pytest.mark.parametrize(("suffix", "bits"), [(".png", 8), (".png", 16), (".tif", 16), (".bmp", 8)])
def test_write_read_round_trip(tmp_path, suffix, bits):
    image = torch.rand(3, 10, 14, generator=torch.Generator().manual_seed(0))
    write_image(tmp_path / f"o{suffix}", image, bit_depth=bits)
    restored = read_image(tmp_path / f"o{suffix}")
    assert (restored - image).abs().max() <= 0.5 / (2**bits - 1) + 1e-6


def test_write_accepts_batch_of_one_and_jpeg(tmp_path):
    image = torch.full((1, 3, 8, 8), 0.5)
    write_image(tmp_path / "o.jpg", image)
    assert (read_image(tmp_path / "o.jpg") - 0.5).abs().max() < 0.02


def test_failed_write_keeps_existing_file(tmp_path):
    good = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(3))
    write_image(tmp_path / "o.png", good)
    before = (tmp_path / "o.png").read_bytes()
    with pytest.raises(InvalidInputError, match="NaN"):
        write_image(tmp_path / "o.png", torch.full((3, 6, 6), float("nan")))
    with pytest.raises(InvalidInputError, match="batch size"):
        write_image(tmp_path / "o.png", torch.zeros(2, 3, 6, 6))
    assert (tmp_path / "o.png").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]  # no temp files left behind


def test_write_rejects_bad_extension_and_depth(tmp_path):
    with pytest.raises(ImageWriteError, match="unsupported extension"):
        write_image(tmp_path / "o.gif", torch.zeros(3, 4, 4))
    with pytest.raises(ImageWriteError, match="16-bit"):
        write_image(tmp_path / "o.jpg", torch.zeros(3, 4, 4), bit_depth=16)


@pytest.mark.parametrize("suffix", [".npy", ".png"])
def test_disparity_round_trip(tmp_path, suffix):
    disparity = torch.rand(1, 9, 7, generator=torch.Generator().manual_seed(4))
    write_disparity(tmp_path / f"d{suffix}", disparity)
    tolerance = 0.0 if suffix == ".npy" else 0.5 / 65535 + 1e-7
    assert (read_disparity(tmp_path / f"d{suffix}") - disparity).abs().max() <= tolerance


def test_list_images_sorted_and_filtered(tmp_path, rgb8):
    for name in ("b.PNG", "a.jpg", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    with pytest.raises(ImageReadError, match="not a folder"):
        list_images(tmp_path / "a.jpg")


def test_written_files_get_umask_permissions(tmp_path):
    import os
    import stat

    write_image(tmp_path / "o.png", torch.zeros(3, 4, 4))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "o.png").stat().st_mode) == 0o666 & ~mask
