"""Refocus and strength (K) sweeps: one prepared image rendered at several focus settings or strengths, written as
numbered frames plus an animated GIF (Pillow) and, when OpenCV can encode it, an MP4.

The disparity is computed once per image (:meth:`BokehPipeline.prepare`); only the network (or renderer) runs per
frame. Animations are downscaled so their long side is at most ``max_side`` pixels: a GIF of 48 MP frames is
neither viewable nor small; the full-resolution frames are the PNGs. Each frame says what it shows: its label
(:func:`sweep_label`, e.g. ``focus 0.20, K 16``) is written into its file name and as a caption on the animation
(the PNG frames stay clean, for further use).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from magicbokeh.data.io import tensor_to_uint8_array, write_image
from magicbokeh.errors import ParameterError
from magicbokeh.inference.pipeline import BokehPipeline, Focus, Prepared
from magicbokeh.utils.files import atomic_path, atomic_write_bytes
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.progress import progress_bar

logger = get_logger(__name__)


def refocus_sweep(
    pipeline: BokehPipeline, prepared: Prepared, focuses: Sequence[Focus], K: float
) -> list[torch.Tensor]:
    """One ``1×3×H×W`` frame per focus setting (a disparity in [0, 1] or an ``(x, y)`` point in input pixels)."""
    if not focuses:
        raise ParameterError("a refocus sweep needs at least one focus value or point")
    frames = []
    for focus in progress_bar(focuses, desc="refocus sweep", unit="frame", leave=False):
        focus_disparity = pipeline.focus_disparity(prepared, focus=focus)
        frames.append(pipeline.render(prepared, focus_disparity, K).image)
    return frames


def strength_sweep(
    pipeline: BokehPipeline, prepared: Prepared, focus_disparity: float, strengths: Sequence[float]
) -> list[torch.Tensor]:
    """One ``1×3×H×W`` frame per blur strength K (same focus)."""
    if not strengths:
        raise ParameterError("a K sweep needs at least one K value")
    return [
        pipeline.render(prepared, focus_disparity, float(K)).image
        for K in progress_bar(strengths, desc="K sweep", unit="frame", leave=False)
    ]


def sweep_label(focus: Focus, K: float) -> str:
    """What a frame shows, e.g. ``focus 0.20, K 16`` or ``focus x420 y310, K 8``."""
    if isinstance(focus, str):
        where = focus
    elif isinstance(focus, int | float):
        where = f"{float(focus):.2f}"
    else:
        x, y = (float(v) for v in focus)
        where = f"x{x:g} y{y:g}"
    return f"focus {where}, K {float(K):g}"


def _file_label(label: str) -> str:
    """``focus 0.20, K 16`` → ``focus-0.20-K-16`` (safe in a file name)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-")


def _caption(array: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in white on a dark band across the top of an ``H×W×3`` uint8 frame."""
    image = Image.fromarray(array)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, image.height // 18))
    _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
    margin = max(2, (bottom - top) // 4)
    draw.rectangle((0, 0, image.width, bottom - top + 2 * margin), fill=(0, 0, 0))
    draw.text((margin, margin - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def _animation_frames(frames: Sequence[torch.Tensor], max_side: int, labels: Sequence[str] | None):
    for index, frame in enumerate(frames):
        height, width = frame.shape[-2:]
        factor = max_side / max(height, width)
        if factor < 1:
            size = (max(round(height * factor), 1), max(round(width * factor), 1))
            frame = F.interpolate(frame, size=size, mode="bilinear", align_corners=False, antialias=True)
        array = tensor_to_uint8_array(frame)
        yield _caption(array, labels[index]) if labels else array


def write_sweep(
    frames: Sequence[torch.Tensor],
    folder: str | Path,
    name: str,
    *,
    labels: Sequence[str] | None = None,
    fps: float = 4.0,
    mp4: bool = True,
    max_side: int = 1024,
) -> list[Path]:
    """Write ``folder/name/frame_000[_label].png …``, ``folder/name.gif`` and (if possible) ``folder/name.mp4``.

    ``labels`` (one per frame, e.g. from :func:`sweep_label`) go into the frame file names and are captioned on the
    animation. The animation plays forwards then backwards (a ping-pong loop reads better for a focus pull).
    Returns the paths written. An MP4 that OpenCV cannot encode (no codec in this build) is skipped with a warning,
    not an error.
    """
    if fps <= 0:
        raise ParameterError(f"sweep fps must be positive, got {fps}")
    if labels is not None and len(labels) != len(frames):
        raise ParameterError(f"a sweep needs one label per frame, got {len(labels)} for {len(frames)} frames")
    folder = Path(folder)
    suffixes = [f"_{_file_label(label)}" for label in labels] if labels else [""] * len(frames)
    written = [
        write_image(folder / name / f"frame_{index:03d}{suffix}.png", frame)
        for index, (frame, suffix) in enumerate(zip(frames, suffixes))
    ]
    arrays = list(_animation_frames(frames, max_side, labels))
    loop = arrays + arrays[-2:0:-1]
    buffer = io.BytesIO()
    images = [Image.fromarray(array) for array in loop]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    gif_path = folder / f"{name}.gif"
    atomic_write_bytes(gif_path, buffer.getvalue())
    written.append(gif_path)
    if mp4:
        mp4_path = folder / f"{name}.mp4"
        if _write_mp4(loop, mp4_path, fps):
            written.append(mp4_path)
    return written


class _NoMp4Codec(Exception):
    """This OpenCV build has no MP4 encoder."""


def _write_mp4(arrays: list, path: Path, fps: float) -> bool:
    height, width = arrays[0].shape[:2]
    try:
        with atomic_path(path) as temp_path:  # on failure the temporary file is removed, nothing is left behind
            writer = cv2.VideoWriter(str(temp_path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
            if not writer.isOpened():
                raise _NoMp4Codec
            for array in arrays:
                writer.write(cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
            writer.release()
    except _NoMp4Codec:
        logger.warning("OpenCV cannot encode MP4 here; wrote the GIF only (%s)", path.with_suffix(".gif"))
        return False
    return True
