"""Refocus and strength (K) sweeps: one prepared image rendered at several focus settings or strengths, written as
numbered frames plus an animated GIF (Pillow) and, when OpenCV can encode it, an MP4.

The disparity is computed once per image (:meth:`BokehPipeline.prepare`); only the network (or renderer) runs per
frame. Animations are downscaled so their long side is at most ``max_side`` pixels: a GIF of 48 MP frames is
neither viewable nor small; the full-resolution frames are the PNGs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import cv2
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from magicbokeh.data.io import tensor_to_uint8_array, write_image
from magicbokeh.errors import ParameterError
from magicbokeh.inference.pipeline import BokehPipeline, Focus, Prepared
from magicbokeh.utils.files import atomic_path, atomic_write_bytes
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)


def refocus_sweep(
    pipeline: BokehPipeline, prepared: Prepared, focuses: Sequence[Focus], K: float
) -> list[torch.Tensor]:
    """One ``1×3×H×W`` frame per focus setting (a disparity in [0, 1] or an ``(x, y)`` point in input pixels)."""
    if not focuses:
        raise ParameterError("a refocus sweep needs at least one focus value or point")
    frames = []
    for focus in tqdm(focuses, desc="refocus sweep", unit="frame", leave=False):
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
        for K in tqdm(strengths, desc="K sweep", unit="frame", leave=False)
    ]


def _animation_frames(frames: Sequence[torch.Tensor], max_side: int):
    for frame in frames:
        height, width = frame.shape[-2:]
        factor = max_side / max(height, width)
        if factor < 1:
            size = (max(round(height * factor), 1), max(round(width * factor), 1))
            frame = F.interpolate(frame, size=size, mode="bilinear", align_corners=False, antialias=True)
        yield tensor_to_uint8_array(frame)


def write_sweep(
    frames: Sequence[torch.Tensor],
    folder: str | Path,
    name: str,
    *,
    fps: float = 4.0,
    mp4: bool = True,
    max_side: int = 1024,
) -> list[Path]:
    """Write ``folder/name/frame_000.png …``, ``folder/name.gif`` and (if possible) ``folder/name.mp4``.

    The animation plays forwards then backwards (a ping-pong loop reads better for a focus pull). Returns the paths
    written. An MP4 that OpenCV cannot encode (no codec in this build) is skipped with a warning, not an error.
    """
    if fps <= 0:
        raise ParameterError(f"sweep fps must be positive, got {fps}")
    folder = Path(folder)
    written = [write_image(folder / name / f"frame_{index:03d}.png", frame) for index, frame in enumerate(frames)]
    arrays = list(_animation_frames(frames, max_side))
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
