"""Render a file or a folder of photos with a pipeline: the body of ``scripts/render.py``, callable from Python.

For every input image ``<stem>.<ext>`` it writes ``<output>/<stem>.png``; with ``save_maps`` also
``<stem>_disparity.png`` and ``<stem>_defocus.png`` (16-bit, output size); with sweeps
``<stem>_refocus/frame_*.png`` + ``<stem>_refocus.gif`` (+ ``.mp4``) and ``<stem>_K/…`` likewise.

Optional per-image inputs follow the input's shape: for a file, ``disparity``/``mask`` are files; for a folder,
they are folders holding a map with the same stem (``.npy``, 8/16-bit PNG or TIFF). A folder run keeps going past
a bad image and reports every failure at the end (as one :class:`MagicBokehError`, so the CLI exits 2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from magicbokeh.data.io import (
    DISPARITY_EXTENSIONS,
    IMAGE_EXTENSIONS,
    list_images,
    read_disparity,
    read_image,
    write_disparity,
    write_image,
)
from magicbokeh.errors import ConfigError, ImageReadError, MagicBokehError
from magicbokeh.inference.pipeline import BokehPipeline, Focus
from magicbokeh.inference.sweeps import refocus_sweep, strength_sweep, sweep_label, write_sweep
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.progress import progress_bar

logger = get_logger(__name__)


@dataclass
class RenderOptions:
    """Per-run settings of :func:`render_inputs` (what ``configs/render.yaml`` holds besides the models).

    ``K`` and ``scale`` left at ``None`` take the pipeline's defaults (its preset's).
    """

    K: float | None = None
    scale: float | None = None
    focus: Focus = "auto"
    save_maps: bool = False
    bit_depth: int = 8
    sweep_focus: Sequence[Focus] | None = None
    sweep_K: Sequence[float] | None = None
    sweep_fps: float = 4.0
    sweep_mp4: bool = True
    sweep_max_side: int = 1024


class LazyDepthModel:
    """Builds the depth model on first use: a run whose images all come with disparity maps needs no weights."""

    def __init__(self, build: Callable[[], object]):
        self._build = build
        self._model = None

    def predict_disparity(self, images: torch.Tensor) -> torch.Tensor:
        if self._model is None:
            self._model = self._build()
        return self._model.predict_disparity(images)


def focus_from_config(value: float | None, point: Sequence[float] | None) -> Focus:
    """``focus.value`` / ``focus.point`` (at most one) → a :data:`Focus`; neither → ``"auto"``."""
    if value is not None and point is not None:
        raise ConfigError("set at most one of focus.value and focus.point (focus.mask overrides both)")
    if value is not None:
        return float(value)
    if point is not None:
        return tuple(float(v) for v in point)
    return "auto"


def _companion(option: Path | None, image_path: Path, single: bool, what: str) -> Path | None:
    """The disparity/mask file for ``image_path``: the option itself for one file, ``<folder>/<stem>.*`` else."""
    if option is None:
        return None
    if single:
        if option.is_dir():
            matches = [p for p in option.glob(f"{image_path.stem}.*") if p.suffix.lower() in DISPARITY_EXTENSIONS]
            if len(matches) == 1:
                return matches[0]
            raise ImageReadError(f"{what} folder '{option}' holds no unique map named '{image_path.stem}.*'")
        return option
    matches = sorted(p for p in option.glob(f"{image_path.stem}.*") if p.suffix.lower() in DISPARITY_EXTENSIONS)
    if not matches:
        raise ImageReadError(
            f"no {what} map for '{image_path.name}' in '{option}' (expected '{image_path.stem}' with one of "
            f"{DISPARITY_EXTENSIONS})"
        )
    return matches[0]


def collect_inputs(input_path: str | Path) -> tuple[list[Path], bool]:
    """The images to render and whether the input was a single file (checked before any model is loaded)."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise ImageReadError(f"input '{input_path}' does not exist (give an image file or a folder of images)")
    single = input_path.is_file()
    images = [input_path] if single else list_images(input_path)
    if not images:
        raise ImageReadError(f"folder '{input_path}' holds no image (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return images, single


def render_inputs(
    pipeline: BokehPipeline,
    input_path: str | Path,
    output_dir: str | Path,
    options: RenderOptions,
    *,
    disparity: str | Path | None = None,
    mask: str | Path | None = None,
) -> list[Path]:
    """Render one image file or every image of a folder; returns the paths of the main outputs.

    Raises:
        ImageReadError: the input is missing, or a folder holds no image.
        MagicBokehError: the single image failed, or (folder) at least one image failed: the message lists them.
    """
    images, single = collect_inputs(input_path)
    output_dir = Path(output_dir)
    disparity = Path(disparity) if disparity is not None else None
    mask = Path(mask) if mask is not None else None
    for option, what in ((disparity, "disparity"), (mask, "mask")):
        if option is not None and not option.exists():
            raise ImageReadError(f"{what} '{option}' does not exist")
        if option is not None and not single and not option.is_dir():
            raise ConfigError(f"the input is a folder, so {what} must be a folder of maps named like the images")

    written, failures = [], []
    for image_path in progress_bar(images, desc="render", unit="image", disable=single):
        try:
            disparity_path = _companion(disparity, image_path, single, "disparity")
            mask_path = _companion(mask, image_path, single, "mask")
            written.append(_render_one(pipeline, image_path, output_dir, options, disparity_path, mask_path))
        except MagicBokehError as error:
            if single:
                raise
            logger.error("%s: %s", image_path.name, error)
            failures.append(f"{image_path.name}: {error}")
    if failures:
        raise MagicBokehError(f"{len(failures)} of {len(images)} images failed:\n  " + "\n  ".join(failures))
    return written


def _render_one(
    pipeline: BokehPipeline,
    image_path: Path,
    output_dir: Path,
    options: RenderOptions,
    disparity_path: Path | None,
    mask_path: Path | None,
) -> Path:
    K = pipeline.default_K if options.K is None else options.K
    image = read_image(image_path)
    disparity = read_disparity(disparity_path) if disparity_path is not None else None
    # Every nonzero mask pixel is subject (≥ 1/255 in an 8-bit file), as in the release: a soft matte's feathered
    # edge is part of the subject, and thresholding at one half would drop it and move the focus.
    mask = read_disparity(mask_path) > 0 if mask_path is not None else None
    prepared = pipeline.prepare(image, scale=options.scale, disparity=disparity)
    focus_disparity = pipeline.focus_disparity(prepared, focus=options.focus, mask=mask)
    result = pipeline.render(prepared, focus_disparity, K)
    sweeps = bool(options.sweep_focus) or bool(options.sweep_K)
    if not sweeps:
        # Drop the input before encoding the output: for a 48 MP photo that is 0.5 GiB less at the write's peak.
        del prepared, image, disparity
    stem = image_path.stem
    target = write_image(output_dir / f"{stem}.png", result.image, bit_depth=options.bit_depth)
    logger.info(
        "%s → %s (%d×%d, focus disparity %.3f, K %g)",
        image_path.name, target, result.image.shape[-1], result.image.shape[-2], focus_disparity, K,
    )  # fmt: skip
    if options.save_maps:
        write_disparity(output_dir / f"{stem}_disparity.png", result.disparity)
        write_disparity(output_dir / f"{stem}_defocus.png", result.defocus)
    del result
    if not sweeps:
        return target
    animation = {"fps": options.sweep_fps, "mp4": options.sweep_mp4, "max_side": options.sweep_max_side}
    if options.sweep_focus:
        focuses = list(options.sweep_focus)
        frames = refocus_sweep(pipeline, prepared, focuses, K)
        labels = [sweep_label(focus, K) for focus in focuses]
        write_sweep(frames, output_dir, f"{stem}_refocus", labels=labels, **animation)
    if options.sweep_K:
        strengths = [float(k) for k in options.sweep_K]
        frames = strength_sweep(pipeline, prepared, focus_disparity, strengths)
        labels = [sweep_label(focus_disparity, k) for k in strengths]
        write_sweep(frames, output_dir, f"{stem}_K", labels=labels, **animation)
    return target
