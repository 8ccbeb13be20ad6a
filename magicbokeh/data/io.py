"""Image and disparity I/O with validation: files ↔ tensors.

Tensor contract (DESIGN §3):

* ``read_image`` returns one image as float32 ``3×H×W`` RGB in [0, 1]; batched APIs take ``B×3×H×W``
  (``image[None]``). EXIF orientation is applied. Grayscale is repeated to RGB, CMYK and palette images are
  converted, 16-bit PNG/TIFF keep their precision (divided by 65535).
* **Alpha**: by default (``alpha="drop"``) the alpha channel is dropped with a warning, keeping the stored colour
  of every pixel; ``alpha="composite"`` composites over a background colour instead (white unless given).
* ``read_disparity`` returns float32 ``1×H×W`` in [0, 1], 1 = nearest (``.npy``, 8/16-bit PNG, TIFF).
* Network inputs in [−1, 1] (``pixel_values``) are the model's business: :mod:`magicbokeh.models.interface`.
* Writers are atomic (temporary file, then rename), so a failed write never corrupts an existing file.

Every failure is a :class:`~magicbokeh.errors.MagicBokehError` subclass whose message names the file.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from magicbokeh.errors import ImageReadError, ImageWriteError, InvalidInputError
from magicbokeh.utils.files import atomic_path
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
DISPARITY_EXTENSIONS = (".npy", ".png", ".tif", ".tiff")
_EXIF_ORIENTATION_TAG = 0x0112
# Decompression-bomb guard stays on, but at a size real camera images never reach (8000×6000 = 48 MP is fine).
Image.MAX_IMAGE_PIXELS = 400_000_000

AlphaMode = Literal["drop", "composite"]


# --------------------------------------------------------------------------------------------------------------------
# Conversions for plotting and encoders
# --------------------------------------------------------------------------------------------------------------------
def tensor_to_uint8_array(image: torch.Tensor) -> np.ndarray:
    """``3×H×W`` (or ``1×3×H×W``) [0, 1] tensor → ``H×W×3`` uint8 array (for plotting and encoders)."""
    image = _single_image(image, "image")
    array = image.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8)
    return array.permute(1, 2, 0).cpu().numpy()


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------
def _check_readable_file(path: Path, what: str) -> None:
    if not path.exists():
        raise ImageReadError(f"{what} '{path}' does not exist")
    if path.is_dir():
        raise ImageReadError(f"{what} '{path}' is a directory, not a file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{what} '{path}' is an empty file (0 bytes)")


def _apply_exif_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an ``H×W[×C]`` array as EXIF orientation 1..8 prescribes (same result as PIL's exif_transpose)."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1, :],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, k=-1),
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, k=1),
    }
    transform = transforms.get(orientation)
    return np.ascontiguousarray(transform(array)) if transform else array


def _stores_16_bit_samples(pil_image: Image.Image, data: bytes) -> bool:
    """True for 16-bit PNG/TIFF, which PIL would silently reduce to 8 bits in RGB mode (header check, no decode)."""
    if pil_image.format == "PNG":
        return len(data) > 24 and data[24] == 16  # IHDR bit depth: 8-byte signature + length + type + width + height
    if pil_image.format == "TIFF":
        bits = pil_image.tag_v2.get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)) == 16
    return False


def _decode_high_bit_depth(data: bytes) -> np.ndarray | None:
    """Decode with OpenCV keeping 16-bit samples; ``None`` if the file is 8-bit (PIL handles those)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if array is None or array.dtype != np.uint16:
        return None
    if array.ndim == 3:
        channel_order = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGBA}.get(array.shape[2])
        if channel_order is not None:
            array = cv2.cvtColor(array, channel_order)
    return array.astype(np.float32) / 65535.0


def _pil_to_float_array(image: Image.Image, path: Path) -> np.ndarray:
    """Any PIL mode → float32 ``H×W`` or ``H×W×{3,4}`` in [0, 1]."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode == "PA":
        image = image.convert("RGBA")
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.uint16).astype(np.float32) / 65535.0
    if mode == "I":
        array = np.asarray(image, dtype=np.int64)
        return array.astype(np.float32) / (65535.0 if array.max(initial=0) > 255 else 255.0)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(image, dtype=np.uint8).astype(np.float32) / 255.0
    raise ImageReadError(f"image '{path}' has an unsupported pixel mode '{mode}'")


def read_image(
    path: str | os.PathLike,
    *,
    alpha: AlphaMode = "drop",
    background: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    """Read an image file as float32 ``3×H×W`` RGB in [0, 1].

    Args:
        path: PNG (8/16-bit), JPEG, TIFF (8/16-bit, float), BMP or WebP file.
        alpha: ``"drop"`` (default; warns) or ``"composite"`` over ``background``.
        background: RGB in [0, 1] used when compositing.

    Raises:
        ImageReadError: missing, empty, a directory, not an image, corrupt or truncated.
        InvalidInputError: the pixels contain NaN or Inf.
    """
    path = Path(path)
    _check_readable_file(path, "image")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as pil_image:
            pil_image.load()  # decode now: truncated or corrupt data fails here, not later
            orientation = pil_image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            array = _decode_high_bit_depth(data) if _stores_16_bit_samples(pil_image, data) else None
            if array is None:
                array = _pil_to_float_array(ImageOps.exif_transpose(pil_image), path)
            else:
                array = _apply_exif_orientation(array, orientation)
    except UnidentifiedImageError as error:
        raise ImageReadError(f"'{path}' is not a readable image (unknown or corrupt format)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(f"image '{path}' is corrupt or truncated: {error}") from error

    if not np.isfinite(array).all():
        raise InvalidInputError(f"image '{path}' contains NaN or Inf pixel values")
    array = np.clip(array, 0.0, 1.0)
    if array.ndim == 2:
        array = array[..., None]
    channels = array.shape[2]
    if channels in (2, 4):  # gray+alpha or RGB+alpha
        colour, opacity = array[..., :-1], array[..., -1:]
        if alpha == "composite":
            bg = np.asarray(background, dtype=np.float32).reshape(1, 1, -1)[..., : colour.shape[2]]
            colour = colour * opacity + bg * (1.0 - opacity)
        elif alpha == "drop":
            if float(opacity.min()) < 1.0:
                warnings.warn(f"image '{path}' has transparency; alpha channel dropped", stacklevel=2)
        else:
            raise InvalidInputError(f"alpha must be 'drop' or 'composite', got {alpha!r}")
        array = colour
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.shape[2] != 3:
        raise ImageReadError(f"image '{path}' has {array.shape[2]} channels; expected 1-4")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()


def read_disparity(
    path: str | os.PathLike,
    *,
    normalize: bool = False,
    is_depth: bool = False,
) -> torch.Tensor:
    """Read a disparity map as float32 ``1×H×W`` in [0, 1] (1 = nearest).

    ``.npy`` arrays (``H×W`` or ``1×H×W``) are used as stored; 8/16-bit images are divided by their type's maximum
    (an RGB image must have equal channels). With ``normalize`` the map is min-max normalised per image (what a
    relative-depth network's output needs); without it, values outside [0, 1] are an error. ``is_depth`` converts
    depth (far = large) to disparity by inversion before normalising (and implies ``normalize``).

    Raises:
        ImageReadError: missing/empty/corrupt file, unsupported extension, wrong shape.
        InvalidInputError: NaN/Inf, values outside [0, 1] without ``normalize``, non-positive depth.
    """
    path = Path(path)
    _check_readable_file(path, "disparity map")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ImageReadError(f"disparity map '{path}' is not a valid .npy array: {error}") from error
        if not np.issubdtype(array.dtype, np.number):
            raise ImageReadError(f"disparity map '{path}' has non-numeric dtype {array.dtype}")
        array = array.astype(np.float32)
        while array.ndim > 2 and array.shape[0] == 1:  # accept 1×H×W and 1×1×H×W as saved by other tools
            array = array[0]
    elif suffix in (".png", ".tif", ".tiff"):
        buffer = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        raw = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ImageReadError(f"disparity map '{path}' is corrupt or not an image")
        if raw.ndim == 3:
            if raw.shape[2] == 4:
                raw = raw[..., :3]
            if not (np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2])):
                raise ImageReadError(f"disparity map '{path}' is a colour image; expected one channel")
            raw = raw[..., 0]
        if raw.dtype == np.uint8:
            array = raw.astype(np.float32) / 255.0
        elif raw.dtype == np.uint16:
            array = raw.astype(np.float32) / 65535.0
        else:
            array = raw.astype(np.float32)
    else:
        raise ImageReadError(
            f"disparity map '{path}' has unsupported extension '{suffix}'; use one of {DISPARITY_EXTENSIONS}"
        )
    if array.ndim != 2:
        raise ImageReadError(f"disparity map '{path}' has shape {array.shape}; expected H×W")
    if not np.isfinite(array).all():
        raise InvalidInputError(f"disparity map '{path}' contains NaN or Inf values")
    if is_depth:
        if (array <= 0).any():
            raise InvalidInputError(f"depth map '{path}' has non-positive values; cannot invert to disparity")
        array = 1.0 / array
        normalize = True
    disparity = torch.from_numpy(np.ascontiguousarray(array))[None]
    if normalize:
        disparity = normalize_disparity(disparity)
    elif disparity.min() < 0 or disparity.max() > 1:
        raise InvalidInputError(
            f"disparity map '{path}' has values in [{disparity.min():.4g}, {disparity.max():.4g}], outside [0, 1]; "
            "pass normalize=True to min-max normalise it"
        )
    return disparity.float()


def normalize_disparity(disparity: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalise each map of a ``…×H×W`` tensor to [0, 1]; a constant map becomes all zeros."""
    flat = disparity.flatten(start_dim=-2)
    low = flat.min(dim=-1, keepdim=True).values.unsqueeze(-1)
    high = flat.max(dim=-1, keepdim=True).values.unsqueeze(-1)
    return ((disparity - low) / (high - low).clamp_min(eps)).clamp(0.0, 1.0)


def list_images(folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Sorted image files directly inside ``folder`` (case-insensitive extensions; hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"'{folder}' is not a folder")
    allowed = {ext.lower() for ext in extensions}
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in allowed and not p.name.startswith(".")
    )


# --------------------------------------------------------------------------------------------------------------------
# Writing (atomic)
# --------------------------------------------------------------------------------------------------------------------
def _single_image(image: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise InvalidInputError(f"{name} has batch size {image.shape[0]}; write one image at a time")
        image = image[0]
    if image.ndim != 3:
        raise InvalidInputError(f"{name} must be C×H×W, got shape {tuple(image.shape)}")
    return image


def _encode(array: np.ndarray, suffix: str, jpeg_quality: int) -> bytes:
    params: list[int] = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    ok, encoded = cv2.imencode(suffix, array, params)
    if not ok:
        raise ImageWriteError(f"OpenCV could not encode an image as '{suffix}'")
    return encoded.tobytes()


def write_image(path: str | os.PathLike, image: torch.Tensor, *, bit_depth: int = 8, jpeg_quality: int = 95) -> Path:
    """Write a ``3×H×W`` (or ``1×3×H×W``, or single-channel) [0, 1] tensor atomically; returns the path.

    ``bit_depth=16`` is honoured for PNG and TIFF. Values are clamped to [0, 1]; NaN is an error.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ImageWriteError(f"cannot write '{path}': unsupported extension; use one of {IMAGE_EXTENSIONS}")
    if bit_depth not in (8, 16):
        raise ImageWriteError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and suffix not in (".png", ".tif", ".tiff"):
        raise ImageWriteError(f"16-bit output needs PNG or TIFF, not '{suffix}'")
    image = _single_image(image, "image").detach().float().cpu()
    if image.shape[0] not in (1, 3):
        raise InvalidInputError(f"image must have 1 or 3 channels, got {image.shape[0]}")
    if not torch.isfinite(image).all():
        raise InvalidInputError(f"refusing to write '{path}': the image contains NaN or Inf")
    scale = 65535.0 if bit_depth == 16 else 255.0
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    array = (image.clamp(0, 1) * scale).round().numpy().astype(dtype).transpose(1, 2, 0)
    if array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    else:
        array = array[..., 0]
    data = _encode(array, suffix, jpeg_quality)
    with atomic_path(path) as temp_path:
        temp_path.write_bytes(data)
    return path


def write_disparity(path: str | os.PathLike, disparity: torch.Tensor) -> Path:
    """Write a ``1×H×W`` (or ``H×W``) [0, 1] disparity map atomically as ``.npy`` (float32) or 16-bit PNG/TIFF."""
    path = Path(path)
    suffix = path.suffix.lower()
    disparity = disparity.detach().float().cpu()
    while disparity.ndim > 2 and disparity.shape[0] == 1:
        disparity = disparity[0]
    if disparity.ndim != 2:
        raise InvalidInputError(f"disparity must be H×W or 1×H×W, got shape {tuple(disparity.shape)}")
    if not torch.isfinite(disparity).all():
        raise InvalidInputError(f"refusing to write '{path}': the disparity contains NaN or Inf")
    if suffix == ".npy":
        with atomic_path(path) as temp_path, open(temp_path, "wb") as handle:
            np.save(handle, disparity.numpy().astype(np.float32))
        return path
    if suffix in (".png", ".tif", ".tiff"):
        array = (disparity.clamp(0, 1) * 65535.0).round().numpy().astype(np.uint16)
        data = _encode(array, suffix, 95)
        with atomic_path(path) as temp_path:
            temp_path.write_bytes(data)
        return path
    raise ImageWriteError(f"cannot write disparity '{path}': use .npy, .png or .tif")
