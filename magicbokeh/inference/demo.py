"""The interactive demo behind ``scripts/demo.py``: click on a photo to focus, drag K, compare methods (Gradio).

Two layers, so the logic is testable without a browser:

* :class:`BokehDemo` — inputs (shipped samples, uploaded photos and disparity maps, pixel caps) and rendering with
  the pipelines the CLI builds (:class:`~magicbokeh.inference.pipeline.MagicBokehPipeline`,
  :class:`~magicbokeh.inference.classical.ClassicalPipeline`): ``prepare`` → ``focus_disparity`` → ``render`` and
  :func:`~magicbokeh.inference.sweeps.refocus_sweep`. Nothing here re-implements focus, K or tiling.
* :func:`build_app` — the page: every :class:`~magicbokeh.errors.MagicBokehError` becomes an ``error:`` line in the
  page's status box (the app keeps serving); anything else is a bug and reaches Gradio's own error toast.

The page makes no request outside the server it is served from: analytics off, no share link, system fonts (the
browser test records every request the page makes).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Gradio reads this when it is imported: no usage analytics, no version check against api.gradio.app.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image, UnidentifiedImageError

from magicbokeh.data.io import list_images, read_disparity, read_image, tensor_to_uint8_array
from magicbokeh.data.middlebury import load_stereo_motorcycle
from magicbokeh.errors import ConfigError, InvalidInputError, MagicBokehError, ParameterError
from magicbokeh.inference.classical import ClassicalPipeline
from magicbokeh.inference.color_fix import COLOR_FIX_METHODS
from magicbokeh.inference.pipeline import BokehPipeline, Focus, MagicBokehPipeline, PipelineOutput
from magicbokeh.inference.sweeps import refocus_sweep, write_sweep
from magicbokeh.optics import K_MAX, HighlightBoost, in_focus_mask
from magicbokeh.optics.aperture import APERTURE_SHAPES, ApertureSpec
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.serving import free_port

logger = get_logger(__name__)

MODES = ("model", "classical")
SCALES = (1, 2, 4)
MOTORCYCLE = "motorcycle (Middlebury 2014, true disparity)"
"""The default sample: a real photo with measured disparity, bundled with scikit-image, so it works offline."""


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoInput:
    """The photo being edited: ``image`` ``3×H×W`` in [0, 1], its disparity ``1×H×W`` (None: the depth model's)."""

    name: str
    image: torch.Tensor
    disparity: torch.Tensor | None
    disparity_source: str  # where the disparity comes from, shown in the page


@dataclass(frozen=True)
class Sample:
    """A shipped sample; ``load`` returns ``(image 3×H×W, disparity 1×H×W or None)``."""

    name: str
    load: Callable[[], tuple[torch.Tensor, torch.Tensor | None]]
    disparity_source: str


def _motorcycle() -> tuple[torch.Tensor, torch.Tensor]:
    image, disparity = load_stereo_motorcycle()
    return image[0], disparity[0]


def shipped_samples(samples_dir: str | os.PathLike) -> dict[str, Sample]:
    """The samples that ship with the code, the Middlebury motorcycle first (the default).

    ``samples_dir/synthetic/image/*.png`` come with ``disparity/<stem>.npy`` (rendered scenes, exact disparity);
    ``samples_dir/photos/*`` have no disparity and need the depth model.
    """
    samples_dir = Path(samples_dir)
    samples = {MOTORCYCLE: Sample(MOTORCYCLE, _motorcycle, "measured (Middlebury stereo)")}
    synthetic = samples_dir / "synthetic"
    if (synthetic / "image").is_dir():
        for image_path in list_images(synthetic / "image"):
            disparity_path = synthetic / "disparity" / f"{image_path.stem}.npy"
            if disparity_path.is_file():
                name = f"synthetic scene {image_path.stem} (exact disparity)"
                samples[name] = Sample(
                    name,
                    lambda i=image_path, d=disparity_path: (read_image(i), read_disparity(d)),
                    "exact (synthetic scene)",
                )
    if (samples_dir / "photos").is_dir():
        for image_path in list_images(samples_dir / "photos"):
            name = f"{image_path.stem} (photo, depth model)"
            samples[name] = Sample(name, lambda i=image_path: (read_image(i), None), "the depth model")
    return samples


def _pixels_text(pixels: float) -> str:
    return f"{pixels / 1e6:.3g} MP"


@dataclass(frozen=True)
class RenderSettings:
    """What the page's controls hold besides the photo and the focus."""

    K: float = 16.0
    scale: int = 2
    mode: str = "classical"
    aperture: str = "disk"
    blades: int = 6
    highlights: bool = False
    color_fix: str = "adain"


@dataclass
class DemoResult:
    output: PipelineOutput
    upsampled: torch.Tensor  # 1×3×sH×sW: the bicubic input, the "before" of the before/after view
    focus: Focus
    seconds: float


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------
class BokehDemo:
    """Inputs, limits and rendering for the demo page, with the CLI's pipeline objects.

    Args:
        classical: the optics renderer's pipeline (always available, no weights); its renderer's aperture and
            highlight settings are the page's defaults and are varied per request with :func:`dataclasses.replace`.
        model: the MagicBokeh network's pipeline, or None (no checkpoint: model mode is disabled).
        samples: name → :class:`Sample` (:func:`shipped_samples`).
        max_input_pixels: larger uploads are refused before they are decoded.
        max_output_pixels: renders whose output (input × scale²) would be larger are refused.
        output_dir: where refocus sweeps are written (``<name>_refocus_<n>/frame_*.png`` + ``.gif``).
        sweep_frames, sweep_fps, sweep_max_side: the refocus sweep (frames across the disparity range).
        depth_note: one line about the depth model shown in the page (e.g. its weights are missing).
    """

    def __init__(
        self,
        classical: ClassicalPipeline,
        model: MagicBokehPipeline | None,
        samples: dict[str, Sample],
        *,
        max_input_pixels: int,
        max_output_pixels: int,
        output_dir: str | os.PathLike,
        sweep_frames: int = 8,
        sweep_fps: float = 4.0,
        sweep_max_side: int = 768,
        depth_note: str = "",
    ):
        if not samples:
            raise ConfigError("the demo needs at least one sample (samples_dir holds none and the motorcycle is off)")
        if sweep_frames < 2:
            raise ConfigError(f"sweep.frames must be ≥ 2, got {sweep_frames}")
        self.classical = classical
        self.model = model
        self.samples = samples
        self.max_input_pixels = int(max_input_pixels)
        self.max_output_pixels = int(max_output_pixels)
        self.output_dir = Path(output_dir)
        self.sweep_frames = int(sweep_frames)
        self.sweep_fps = float(sweep_fps)
        self.sweep_max_side = int(sweep_max_side)
        self.depth_note = depth_note
        self._sweep_counter = itertools.count()

    # -- inputs -------------------------------------------------------------------------------------------------------
    def load_sample(self, name: str) -> DemoInput:
        if name not in self.samples:
            raise ParameterError(f"unknown sample {name!r}; pick one of the list")
        sample = self.samples[name]
        image, disparity = sample.load()
        return DemoInput(name, image, disparity, sample.disparity_source)

    def load_photo(self, path: str | os.PathLike) -> DemoInput:
        """An uploaded photo (any format :func:`~magicbokeh.data.io.read_image` reads), checked against the cap."""
        path = Path(path)
        with _named_by_file_name(path):
            self._check_input_pixels(path)
            image = read_image(path)
        return DemoInput(path.name, image, None, "the depth model")

    def _check_input_pixels(self, path: Path) -> None:
        """Refuse a photo above the cap from its header, before decoding it (a 400 MP upload is 5 GB of float32)."""
        try:
            with Image.open(path) as header:
                width, height = header.size
        except Image.DecompressionBombError as error:
            raise InvalidInputError(f"'{path.name}' is too large to open safely: {error}") from error
        except (UnidentifiedImageError, OSError):
            return  # not an image, or unreadable: read_image reports it with its own message
        if width * height > self.max_input_pixels:
            raise InvalidInputError(
                f"'{path.name}' is {width}×{height} = {_pixels_text(width * height)}, above this demo's cap of "
                f"{_pixels_text(self.max_input_pixels)}; downscale it or restart with a larger limits.max_input_pixels"
            )

    def with_disparity(self, current: DemoInput, path: str | os.PathLike) -> DemoInput:
        """The current photo with an uploaded disparity map (``.npy``, 8/16-bit PNG, TIFF; 1 = nearest).

        The map must have the photo's size: the pipeline also takes one at the output size, but here the output size
        changes with the scale control, and a map kept for later renders must fit them all.
        """
        path = Path(path)
        with _named_by_file_name(path):
            disparity = read_disparity(path)
        if disparity.shape[-2:] != current.image.shape[-2:]:
            raise InvalidInputError(
                f"disparity map '{path.name}' is {disparity.shape[-1]}×{disparity.shape[-2]} but the photo is "
                f"{current.image.shape[-1]}×{current.image.shape[-2]} (W×H); upload a map of the photo's size"
            )
        return dataclasses.replace(current, disparity=disparity, disparity_source=f"uploaded ({path.name})")

    # -- pipelines ----------------------------------------------------------------------------------------------------
    def pipeline_for(self, settings: RenderSettings) -> BokehPipeline:
        """The CLI's pipeline for ``settings.mode``, with the page's per-request options applied to a copy."""
        if settings.mode == "model":
            if self.model is None:
                raise ConfigError("model mode needs a checkpoint: start the demo with `scripts/demo.py ckpt=DIR`")
            if settings.color_fix not in COLOR_FIX_METHODS:
                raise ParameterError(f"colour fix must be one of {COLOR_FIX_METHODS}, got {settings.color_fix!r}")
            # A shallow copy shares the network (no second copy of the weights); only the colour fix differs.
            pipeline = copy.copy(self.model)
            pipeline.color_fix = settings.color_fix
            return pipeline
        if settings.mode != "classical":
            raise ParameterError(f"mode must be one of {MODES}, got {settings.mode!r}")
        if settings.aperture not in APERTURE_SHAPES:
            raise ParameterError(f"aperture must be one of {APERTURE_SHAPES}, got {settings.aperture!r}")
        base = self.classical.renderer
        aperture = ApertureSpec(settings.aperture, int(settings.blades), base.aperture.rotation_deg)
        highlight = (base.highlight or HighlightBoost()) if settings.highlights else None
        pipeline = copy.copy(self.classical)
        pipeline.renderer = dataclasses.replace(base, aperture=aperture, highlight=highlight)
        return pipeline

    def _check_output_pixels(self, image: torch.Tensor, scale: float) -> None:
        height, width = image.shape[-2:]
        pixels = round(height * scale) * round(width * scale)
        if pixels > self.max_output_pixels:
            raise InvalidInputError(
                f"×{scale:g} would make a {round(width * scale)}×{round(height * scale)} = {_pixels_text(pixels)} "
                f"output, above this demo's cap of {_pixels_text(self.max_output_pixels)}; choose a smaller scale"
            )

    # -- rendering ----------------------------------------------------------------------------------------------------
    def render(self, current: DemoInput, focus: Focus, settings: RenderSettings) -> tuple[DemoInput, DemoResult]:
        """One render; returns the input (with the depth model's disparity kept, so it runs once per photo)."""
        if settings.scale not in SCALES:
            raise ParameterError(f"scale must be one of {SCALES}, got {settings.scale}")
        self._check_output_pixels(current.image, settings.scale)
        pipeline = self.pipeline_for(settings)
        start = time.perf_counter()
        prepared = pipeline.prepare(current.image, scale=float(settings.scale), disparity=current.disparity)
        if current.disparity is None:
            current = dataclasses.replace(current, disparity=prepared.disparity[0])
        focus_disparity = pipeline.focus_disparity(prepared, focus=focus)
        output = pipeline.render(prepared, focus_disparity, float(settings.K))
        result = DemoResult(output, prepared.upsampled, focus, time.perf_counter() - start)
        return current, result

    def refocus_gif(self, current: DemoInput, settings: RenderSettings) -> Path:
        """A focus pull from far to near (focus disparities spread over the photo's disparity range) as a GIF."""
        self._check_output_pixels(current.image, settings.scale)
        pipeline = self.pipeline_for(settings)
        prepared = pipeline.prepare(current.image, scale=float(settings.scale), disparity=current.disparity)
        # Quantiles rather than min/max: a few outlier pixels would spend frames on planes nothing lies on.
        low, high = torch.quantile(prepared.disparity.flatten(), torch.tensor([0.02, 0.98])).tolist()
        focuses = np.linspace(low, high, self.sweep_frames).tolist()
        frames = refocus_sweep(pipeline, prepared, focuses, float(settings.K))
        name = f"{_file_stem(current.name)}_refocus_{next(self._sweep_counter):03d}"
        written = write_sweep(
            frames, self.output_dir, name, fps=self.sweep_fps, mp4=False, max_side=self.sweep_max_side
        )
        return next(path for path in written if path.suffix == ".gif")


@contextlib.contextmanager
def _named_by_file_name(path: Path) -> Iterator[None]:
    """Errors about an upload name the file the user chose, not the server's temporary copy of it."""
    try:
        yield
    except MagicBokehError as error:
        message = str(error).replace(str(path), path.name)
        if message == str(error):
            raise
        raise type(error)(message) from error


def _file_stem(name: str) -> str:
    """A file-name-safe stem for a sample or upload name ("motorcycle (Middlebury …)" → "motorcycle")."""
    stem = Path(name.split(" (")[0]).stem
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40] or "photo"


# --------------------------------------------------------------------------------------------------------------------
# Pictures for the page
# --------------------------------------------------------------------------------------------------------------------
def colorize(values: torch.Tensor, colormap: str = "viridis") -> np.ndarray:
    """``1×1×H×W`` (or ``1×H×W``) values in [0, 1] → ``H×W×3`` uint8 through a matplotlib colormap.

    The range is fixed at [0, 1], not stretched per image, so defocus maps at different K compare at a glance.
    """
    array = values.detach().float().cpu().reshape(values.shape[-2:]).clamp(0, 1).numpy()
    return (colormaps[colormap](array)[..., :3] * 255.0).round().astype(np.uint8)


def in_focus_overlay(image: torch.Tensor, defocus: torch.Tensor) -> np.ndarray:
    """The output with its out-of-focus region dimmed and FAMA's in-focus region (defocus ≤ 0.1) tinted green."""
    mask = in_focus_mask(defocus).float()
    green = torch.tensor([0.2, 1.0, 0.3]).view(1, 3, 1, 1)
    tinted = 0.7 * image + 0.3 * green
    dimmed = 0.35 * image
    return tensor_to_uint8_array(mask * tinted + (1 - mask) * dimmed)


def _focus_text(focus: Focus) -> str:
    if isinstance(focus, str):
        return "automatic focus"
    if isinstance(focus, int | float):
        return f"focus disparity {focus:.3f}"
    return f"focus point ({int(focus[0])}, {int(focus[1])})"


def status_text(current: DemoInput, result: DemoResult, settings: RenderSettings) -> str:
    height, width = result.output.image.shape[-2:]
    if settings.mode == "model":
        method = f"model, colour fix {settings.color_fix}"
    else:
        method = f"classical, {settings.aperture} aperture" + (", highlight boost" if settings.highlights else "")
    return (
        f"**{current.name}** · {_focus_text(result.focus)} → d_f = {result.output.focus_disparity:.3f} · "
        f"K = {settings.K:g} · ×{settings.scale} → {width}×{height} · {method} · disparity: "
        f"{current.disparity_source} · rendered in {result.seconds:.2f} s"
    )


def error_text(error: MagicBokehError) -> str:
    return f"**error:** {error}"


# --------------------------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PageDefaults:
    """Initial control values (``ui`` in ``configs/demo.yaml``)."""

    sample: str = MOTORCYCLE
    K: float = 16.0
    scale: int = 2
    mode: str = "classical"
    color_fix: str = "adain"


_CSS = "#status { min-height: 3em; }"


def build_app(demo: BokehDemo, defaults: PageDefaults) -> gr.Blocks:
    """The Gradio page around ``demo`` (call :func:`launch` to serve it)."""
    if defaults.sample not in demo.samples:
        raise ConfigError(f"ui.sample {defaults.sample!r} is not a shipped sample; one of {list(demo.samples)}")
    if defaults.mode == "model" and demo.model is None:
        raise ConfigError("ui.mode=model needs ckpt=CHECKPOINT_DIR (or use ui.mode=classical)")
    if defaults.mode not in MODES or defaults.scale not in SCALES or not 0 <= defaults.K <= K_MAX:
        raise ConfigError(
            f"ui: mode must be one of {MODES}, scale one of {SCALES} and K in [0, {K_MAX:g}]; "
            f"got {defaults.mode!r}, {defaults.scale}, {defaults.K}"
        )
    base_renderer = demo.classical.renderer
    has_model = demo.model is not None
    model_note = (
        "**model** runs the MagicBokeh checkpoint (super-resolution and bokeh in one pass)."
        if has_model
        else "**model** mode is off: no checkpoint was given (start the demo with `python scripts/demo.py "
        "ckpt=CHECKPOINT_DIR` to compare the network with the classical renderer)."
    )
    toolbar = ["download", "fullscreen"]  # not "share": it posts to the Hugging Face Hub

    with gr.Blocks(title="MagicBokeh demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            "## MagicBokeh — click on the photo to focus\n"
            "Pick a sample or upload a photo, **click on it** to set the focus point, drag **K** (blur strength, "
            "0 = none) and choose the output scale. **classical** is the optics renderer (bicubic upsampling + "
            f"layered bokeh, no weights); {model_note} {demo.depth_note}"
        )
        session = gr.State(None)  # the DemoInput being edited
        focus_state = gr.State("auto")  # "auto" until the first click, then (x, y) in input pixels
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                sample = gr.Dropdown(list(demo.samples), value=defaults.sample, label="sample", elem_id="sample")
                with gr.Row():
                    photo_file = gr.File(label="upload a photo", type="filepath", height=150, elem_id="photo-upload")
                    disparity_file = gr.File(
                        label="its disparity map (.npy / PNG, 1 = near)", type="filepath", height=150,
                        elem_id="disparity-upload",
                    )  # fmt: skip
                input_view = gr.Image(
                    label="input — click to focus", interactive=False, format="png", buttons=["fullscreen"],
                    elem_id="input-image",
                )  # fmt: skip
                K = gr.Slider(0, K_MAX, value=defaults.K, step=1, label="K (blur strength)", elem_id="k-slider")
                with gr.Row():
                    scale = gr.Radio(list(SCALES), value=defaults.scale, label="scale (output = input × scale)",
                                     elem_id="scale")  # fmt: skip
                    mode = gr.Radio(
                        list(MODES), value=defaults.mode, label="mode", interactive=has_model, elem_id="mode",
                        info=None if has_model else "model needs ckpt=CHECKPOINT_DIR",
                    )  # fmt: skip
                with gr.Row():
                    render_button = gr.Button("render", variant="primary", elem_id="render")
                    sweep_button = gr.Button("refocus sweep (GIF)", elem_id="sweep")
                with gr.Accordion("classical renderer", open=False):
                    aperture = gr.Radio(list(APERTURE_SHAPES), value=base_renderer.aperture.shape, label="aperture")
                    blades = gr.Slider(3, 12, value=base_renderer.aperture.blades, step=1, label="polygon blades")
                    highlights = gr.Checkbox(value=base_renderer.highlight is not None, label="highlight boost")
                color_fix = gr.Radio(
                    list(COLOR_FIX_METHODS), value=defaults.color_fix, label="colour fix (model mode)",
                    interactive=has_model, elem_id="color-fix",
                )  # fmt: skip
            with gr.Column(scale=3, min_width=400):
                status = gr.Markdown("loading…", elem_id="status")
                with gr.Row():
                    result_view = gr.Image(label="result", format="png", interactive=False, buttons=toolbar,
                                           elem_id="result")  # fmt: skip
                    before_after = gr.ImageSlider(label="before (bicubic) / after", format="png", interactive=False,
                                                  buttons=toolbar, elem_id="before-after")  # fmt: skip
                with gr.Row():
                    overlay_view = gr.Image(label="in focus (defocus ≤ 0.1)", interactive=False, buttons=toolbar,
                                            elem_id="overlay")  # fmt: skip
                    disparity_view = gr.Image(label="disparity (yellow = near)", interactive=False, buttons=toolbar,
                                              elem_id="disparity")  # fmt: skip
                    defocus_view = gr.Image(label="defocus |d − d_f|·K/32", interactive=False, buttons=toolbar,
                                            elem_id="defocus")  # fmt: skip
                sweep_view = gr.Image(label="refocus sweep", type="filepath", interactive=False, buttons=toolbar,
                                      elem_id="sweep-gif")  # fmt: skip

        # Gradio passes inputs positionally and finds event data by type hint, so every handler spells out the
        # seven settings (k, s, m, a, b, h, c) = (K, scale, mode, aperture, blades, highlights, colour fix).
        settings_inputs = [K, scale, mode, aperture, blades, highlights, color_fix]
        render_outputs = [session, result_view, before_after, overlay_view, disparity_view, defocus_view, status]
        input_outputs = [sample, photo_file, disparity_file, input_view, focus_state, *render_outputs]
        keep_render = (gr.skip(),) * (len(render_outputs) - 1)  # every render output but the status
        keep_input = (gr.skip(),) * 5  # the sample list, the upload boxes, the input view, the focus

        def settings_from(k, s, m, a, b, h, c) -> RenderSettings:
            return RenderSettings(float(k), int(s), m, a, int(b), bool(h), c)

        def respond(current: DemoInput | None, focus: Focus, settings: RenderSettings, progress: gr.Progress):
            """Render and fill every output; a user error clears the pictures and explains itself in the status."""
            if current is None:
                return (None, None, None, None, None, None, "pick a sample or upload a photo")
            progress(0.0, desc="rendering")
            try:
                current, result = demo.render(current, focus, settings)
            except MagicBokehError as error:
                logger.info("demo: %s", error)
                return (current, None, None, None, None, None, error_text(error))
            output = result.output
            image = tensor_to_uint8_array(output.image)
            return (
                current,
                image,
                (tensor_to_uint8_array(result.upsampled), image),
                in_focus_overlay(output.image, output.defocus),
                colorize(output.disparity),
                colorize(output.defocus, "magma"),
                status_text(current, result, settings),
            )

        def on_render(current, focus, k, s, m, a, b, h, c, progress=gr.Progress(track_tqdm=True)):
            return respond(current, focus, settings_from(k, s, m, a, b, h, c), progress)

        def on_sample(name, k, s, m, a, b, h, c, progress=gr.Progress(track_tqdm=True)):
            try:
                current = demo.load_sample(name)
            except MagicBokehError as error:
                return (*keep_input, *keep_render, error_text(error))
            view = tensor_to_uint8_array(current.image)
            settings = settings_from(k, s, m, a, b, h, c)
            return (gr.skip(), None, None, view, "auto", *respond(current, "auto", settings, progress))

        # An upload box is emptied once its file is read (the status names the file), so the next file can be dropped
        # on it straight away.
        def on_photo(path, k, s, m, a, b, h, c, progress=gr.Progress(track_tqdm=True)):
            if path is None:  # the upload box was cleared
                return (*keep_input, *keep_render, gr.skip())
            try:
                current = demo.load_photo(path)
            except MagicBokehError as error:
                return (gr.skip(), None, *keep_input[2:], *keep_render, error_text(error))
            view = tensor_to_uint8_array(current.image)
            settings = settings_from(k, s, m, a, b, h, c)
            # The sample list is emptied too: the photo on show is the upload, not the sample it named.
            return (None, None, None, view, "auto", *respond(current, "auto", settings, progress))

        def on_disparity(path, current, focus, k, s, m, a, b, h, c, progress=gr.Progress(track_tqdm=True)):
            if path is None:
                return (gr.skip(), *keep_render, gr.skip())
            if current is None:
                return (None, *keep_render, "pick or upload the photo first, then its disparity map")
            try:
                current = demo.with_disparity(current, path)
            except MagicBokehError as error:
                return (None, *keep_render, error_text(error))
            return (None, *respond(current, focus, settings_from(k, s, m, a, b, h, c), progress))

        def on_click(current, k, s, m, a, b, h, c, event: gr.SelectData, progress=gr.Progress(track_tqdm=True)):
            focus = (float(event.index[0]), float(event.index[1]))  # input pixels: the view shows the input as is
            return (focus, *respond(current, focus, settings_from(k, s, m, a, b, h, c), progress))

        def on_sweep(current, k, s, m, a, b, h, c, progress=gr.Progress(track_tqdm=True)):
            if current is None:
                return gr.skip(), "pick a sample or upload a photo"
            settings = settings_from(k, s, m, a, b, h, c)
            progress(0.0, desc="refocus sweep")
            try:
                path = demo.refocus_gif(current, settings)
            except MagicBokehError as error:
                return gr.skip(), error_text(error)
            return str(path), f"**{current.name}** · refocus sweep: {demo.sweep_frames} frames at K = {settings.K:g}"

        # A trigger that changes the input also renders, in the same call: no stale pictures in between. Progress
        # shows on the result only, so the status line always holds the last finished answer.
        rendering = {"show_progress_on": [result_view]}
        app.load(on_sample, [sample, *settings_inputs], input_outputs, **rendering)
        sample.input(on_sample, [sample, *settings_inputs], input_outputs, **rendering)
        photo_file.upload(on_photo, [photo_file, *settings_inputs], input_outputs, **rendering)
        disparity_inputs = [disparity_file, session, focus_state, *settings_inputs]
        disparity_file.upload(on_disparity, disparity_inputs, [disparity_file, *render_outputs], **rendering)
        input_view.select(on_click, [session, *settings_inputs], [focus_state, *render_outputs], **rendering)
        render_inputs = [session, focus_state, *settings_inputs]
        render_button.click(on_render, render_inputs, render_outputs, **rendering)
        K.release(on_render, render_inputs, render_outputs, **rendering)
        for control in (scale, mode, aperture, blades, highlights, color_fix):
            control.input(on_render, render_inputs, render_outputs, **rendering)
        sweep_button.click(on_sweep, [session, *settings_inputs], [sweep_view, status], show_progress_on=[sweep_view])
    return app


def launch(app: gr.Blocks, *, host: str, port: int, max_upload: str, allowed_paths: Sequence[str]) -> str:
    """Serve ``app`` on ``host:port`` (0: a free port) in a background thread; returns the local URL.

    Nothing leaves the machine: system fonts only (Gradio's default theme names web fonts), no share link, no MCP
    server, no run history, no monitoring endpoint. ``app.block_thread()`` waits until Ctrl-C; ``app.close()`` stops.
    """
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    _, url, _ = app.launch(
        server_name=host,
        server_port=port or free_port(host),
        share=False,
        inbrowser=False,
        prevent_thread_lock=True,
        max_file_size=max_upload,
        allowed_paths=list(allowed_paths),
        theme=theme,
        css=_CSS,
        mcp_server=False,
        run_history=False,
        enable_monitoring=False,
        footer_links=[],
        ssr_mode=False,
        quiet=True,
    )
    return url
