"""Methods the evaluation runner compares, all behind one interface and all run by the inference pipelines.

A method maps a :class:`Case` — one benchmark input already through the pipelines' shared front end
(:meth:`~magicbokeh.inference.pipeline.BokehPipeline.prepare`: input checks, upsampling by ``scale``, disparity at the
input and output size), its focus disparity and its strength K — to an output image ``1×3×H×W`` in [0, 1]:

- ``model``            :class:`~magicbokeh.inference.MagicBokehPipeline`: tiles, colour fix, precision, exactly what
                       ``scripts/render.py`` runs with the same settings;
- ``bicubic``          the bicubic-upsampled input, nothing else (the floor every method must beat);
- ``bicubic_renderer`` bicubic input, then the classical renderer (``render.py mode=classical``);
- ``two_stage``        the pipeline's super-resolution pass (K = 0: all-zero defocus), then the classical renderer —
                       the paper's "ISR → bokeh" two-stage design (Table 1) with our own SR model as the ISR stage;
- ``model_two_pass``   the pipeline's SR pass, then the pipeline again on its output with the bokeh condition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from magicbokeh.errors import ConfigError, ParameterError
from magicbokeh.inference.classical import ClassicalPipeline
from magicbokeh.inference.pipeline import BokehPipeline, MagicBokehPipeline, PipelineOutput, Prepared
from magicbokeh.inference.presets import get_preset
from magicbokeh.optics.defocus import defocus_map

MODEL_METHODS = ("model", "two_stage", "model_two_pass")
RENDERER_METHODS = ("bicubic_renderer", "two_stage")
METHODS = ("model", "bicubic", "bicubic_renderer", "two_stage", "model_two_pass")

# (images, disparity, focus_disparity: float, K: float) -> images; a BokehRenderer, or a stand-in in tests.
Renderer = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]


@dataclass(frozen=True)
class Case:
    """One method input: the prepared image and maps (:class:`~magicbokeh.inference.pipeline.Prepared`), the focus
    disparity and the strength K. ``has_disparity`` is False for pure-SR samples without a map (zeros stand in)."""

    prepared: Prepared
    focus_disparity: float
    K: float
    has_disparity: bool = True


@dataclass(frozen=True)
class PipelineSettings:
    """How the model methods run the inference pipeline (``configs/eval.yaml: pipeline``); recorded in the run.

    ``tile_size=None`` runs whole images at once. ``preset="release"`` is the official release's inference, a
    :class:`~magicbokeh.inference.MagicBokehPipeline` option passed through as is.
    """

    preset: str = "default"
    tile_size: int | None = 512
    tile_stride: int | None = 256
    tile_batch_size: int = 1
    color_fix: str = "adain"
    precision: str = "auto"

    def __post_init__(self) -> None:
        get_preset(self.preset)  # an unknown name is a ConfigError naming the choices

    def record(self) -> dict:
        return asdict(self)


class BicubicPipeline(BokehPipeline):
    """The pipelines' front end with bicubic upsampling as its whole rendering: the ``bicubic`` baseline, and what
    prepares every method's input, so evaluation checks images, disparity and masks exactly as ``render.py`` does."""

    def render(self, prepared: Prepared, focus_disparity: float, K: float) -> PipelineOutput:
        defocus = defocus_map(prepared.disparity_out, focus_disparity, K)  # validates K and the focus
        return PipelineOutput(prepared.upsampled, prepared.disparity_out, defocus, float(focus_disparity))


class PosteriorSampling(torch.nn.Module):
    """The network drawing its VAE latent from the posterior with ``generator`` (set per image by the method), so
    several seeds give several outputs; the pipeline calls it like the network itself."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.stride = int(getattr(model, "stride", 1))
        self.generator: torch.Generator | None = None

    def forward(self, images: torch.Tensor, defocus: torch.Tensor) -> torch.Tensor:
        return self.model(images, defocus, generator=self.generator)


@dataclass
class Method:
    """A named prediction function; ``stochastic`` methods are run once per seed, the others once."""

    name: str
    fn: Callable[[Case, torch.Generator | None], torch.Tensor]
    stochastic: bool = False

    def run(self, case: Case, generator: torch.Generator | None = None) -> torch.Tensor:
        """The method's output for one prepared case, ``1×3×H×W`` float32 in [0, 1] on the CPU."""
        return self.fn(case, generator).float().cpu().clamp(0.0, 1.0)

    def __call__(
        self,
        images: torch.Tensor,
        disparity: torch.Tensor,
        focus_disparity: float | torch.Tensor,
        K: float | torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One image given as tensors (``1×3×H×W`` at the output size, ``1×1×H×W`` disparity): prepared at scale 1
        by :class:`BicubicPipeline`, then :meth:`run` (what the speed benchmark times)."""
        case = Case(BicubicPipeline().prepare(images, scale=1.0, disparity=disparity), float(focus_disparity), float(K))
        return self.run(case, generator)


def build_model_pipeline(
    model: torch.nn.Module,
    settings: PipelineSettings = PipelineSettings(),
    *,
    device: torch.device | str | None = None,
    sample_posterior: bool = False,
) -> tuple[MagicBokehPipeline, PosteriorSampling | None]:
    """The pipeline the model methods share; with ``sample_posterior`` also the wrapper whose generator they set."""
    sampler = PosteriorSampling(model) if sample_posterior else None
    pipeline = MagicBokehPipeline(
        sampler if sampler is not None else model,
        preset=settings.preset,
        tile_size=settings.tile_size,
        tile_stride=settings.tile_stride,
        tile_batch_size=settings.tile_batch_size,
        color_fix=settings.color_fix,
        precision=settings.precision,
        device=device,
        progress=False,
    )
    return pipeline, sampler


def build_methods(
    names: list[str] | tuple[str, ...],
    *,
    model: torch.nn.Module | None = None,
    renderer: Renderer | None = None,
    pipeline: PipelineSettings = PipelineSettings(),
    device: torch.device | str | None = None,
    sample_posterior: bool = False,
) -> list[Method]:
    """Build :data:`METHODS` by name; the model methods share one :class:`MagicBokehPipeline`.

    ``sample_posterior`` makes the network draw its VAE latent from the posterior with the per-image generator
    (several seeds then differ); otherwise it uses the posterior mean (deterministic). ``device``: where the network
    and the renderer run (default: where the model's parameters are, and the CPU for the renderer).
    """
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ParameterError(f"unknown evaluation method(s) {unknown}; choose from {', '.join(METHODS)}")
    if model is None and any(name in MODEL_METHODS for name in names):
        needing = [name for name in names if name in MODEL_METHODS]
        raise ConfigError(f"method(s) {needing} need a model checkpoint: pass ckpt=/path/to/checkpoint")
    if renderer is None and any(name in RENDERER_METHODS for name in names):
        raise ConfigError(f"method(s) {[n for n in names if n in RENDERER_METHODS]} need the classical renderer")

    bicubic = BicubicPipeline()
    classical = ClassicalPipeline(renderer, device=device or "cpu") if renderer is not None else None
    network, sampler = (None, None)
    if model is not None and any(name in MODEL_METHODS for name in names):
        network, sampler = build_model_pipeline(model, pipeline, device=device, sample_posterior=sample_posterior)

    def network_pass(prepared: Prepared, focus: float, K: float, generator: torch.Generator | None) -> torch.Tensor:
        if sampler is not None:
            sampler.generator = generator
        return network.render(prepared, focus, K).image

    def super_resolved(case: Case, generator: torch.Generator | None) -> Prepared:
        """The pipeline's SR pass (K = 0), prepared again as the input of a second stage with the same disparity."""
        sr = network_pass(case.prepared, case.focus_disparity, 0.0, generator)
        return bicubic.prepare(sr, scale=1.0, disparity=case.prepared.disparity_out)

    def model_fn(case: Case, generator):
        return network_pass(case.prepared, case.focus_disparity, case.K, generator)

    def bicubic_fn(case: Case, generator):
        return bicubic.render(case.prepared, case.focus_disparity, case.K).image

    def bicubic_renderer_fn(case: Case, generator):
        return classical.render(case.prepared, case.focus_disparity, case.K).image

    def two_stage_fn(case: Case, generator):
        return classical.render(super_resolved(case, generator), case.focus_disparity, case.K).image

    def two_pass_fn(case: Case, generator):
        return network_pass(super_resolved(case, generator), case.focus_disparity, case.K, generator)

    functions = {
        "model": model_fn,
        "bicubic": bicubic_fn,
        "bicubic_renderer": bicubic_renderer_fn,
        "two_stage": two_stage_fn,
        "model_two_pass": two_pass_fn,
    }
    return [Method(name, functions[name], stochastic=sample_posterior and name in MODEL_METHODS) for name in names]


def build_method(
    name: str,
    *,
    model: torch.nn.Module | None = None,
    renderer: Renderer | None = None,
    pipeline: PipelineSettings = PipelineSettings(),
    device: torch.device | str | None = None,
    sample_posterior: bool = False,
) -> Method:
    """One of :data:`METHODS` (see :func:`build_methods`)."""
    return build_methods(
        [name], model=model, renderer=renderer, pipeline=pipeline, device=device, sample_posterior=sample_posterior
    )[0]
