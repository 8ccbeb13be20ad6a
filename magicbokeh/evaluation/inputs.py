"""What each benchmark sample feeds the methods: input image, disparity, focus and K, the way the benchmark says.

A benchmark's protocol (``configs/benchmark/*.yaml``):

- ``input``: ``lq`` (the degraded image) or ``hq`` (the clean image: the hallucination check);
- ``disparity``: ``index`` uses the benchmark's maps, ``estimate`` always estimates disparity from the input with
  the degradation-aware depth model (the paper's protocol: it sees the LQ photo, not the clean one). A bokeh sample
  without a map is estimated under ``index`` too; a pure-SR sample (K = 0) without one needs none (zeros). The
  depth axis of the ablations (:mod:`magicbokeh.depth.sources`) names the source outright, whatever the input:
  ``gt`` (the benchmark's maps, required), ``student_lq`` (the student on the LQ image), ``teacher_lq`` (the
  teacher on the LQ image), ``teacher_hq`` (the teacher on the clean HQ image); the caller gives the depth model
  the source names;
- ``focus``: ``index`` (the sample's ``focus_disparity``), ``mask`` (median disparity inside the sample's subject
  mask: the release's rule), ``auto`` (the pipeline's automatic focus) or a number in [0, 1].

Estimated disparity is cached beside the predictions as ``<run_dir>/disparity/<sample id>.npy`` (float32, lossless),
so a rerun, another method or the score stage reuses it without calling the depth model again.

Every input goes through the pipelines' own front end (:meth:`BokehPipeline.prepare` and
:meth:`BokehPipeline.focus_disparity`): a disparity map or mask that matches neither the input nor the output size
is rejected exactly as ``scripts/render.py`` rejects it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from magicbokeh.data.benchmark_index import BenchmarkSample, check_sample_id
from magicbokeh.data.io import read_disparity, read_image, write_disparity
from magicbokeh.data.transforms import resize_images
from magicbokeh.depth.sources import DEPTH_SOURCES, depth_source
from magicbokeh.errors import ConfigError, DatasetError
from magicbokeh.evaluation.baselines import BicubicPipeline, Case
from magicbokeh.inference.pipeline import BokehPipeline, Focus, Prepared
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

INPUTS = ("lq", "hq")
DISPARITY_SOURCES = ("index", "estimate", *DEPTH_SOURCES)
FOCUS_RULES = ("index", "mask", "auto")
DISPARITY_CACHE = "disparity"


@dataclass(frozen=True)
class Protocol:
    """How samples become method inputs (see the module docstring)."""

    input: str = "lq"
    disparity: str = "index"
    focus: str | float = "index"

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ConfigError(f"benchmark.input must be one of {INPUTS}, got {self.input!r}")
        if self.disparity not in DISPARITY_SOURCES:
            raise ConfigError(f"benchmark.disparity must be one of {DISPARITY_SOURCES}, got {self.disparity!r}")
        if isinstance(self.focus, str):
            if self.focus not in FOCUS_RULES:
                raise ConfigError(
                    f"benchmark.focus must be one of {FOCUS_RULES} or a disparity in [0, 1], got {self.focus!r}"
                )
        elif isinstance(self.focus, bool) or not isinstance(self.focus, int | float) or not 0 <= self.focus <= 1:
            raise ConfigError(f"benchmark.focus as a value is a disparity in [0, 1], got {self.focus!r}")

    def record(self) -> dict:
        return {"input": self.input, "disparity": self.disparity, "focus": self.focus}


def output_size(sample: BenchmarkSample) -> tuple[int, int]:
    """The size predictions are made and scored at: the target's, else the HQ image's, else the input's."""
    for path in (sample.target, sample.hq, sample.lq):
        if path is not None:
            return tuple(read_image(path).shape[-2:])
    raise DatasetError(f"sample '{sample.id}' has no image")


def input_scale(sample: BenchmarkSample, input_size: tuple[int, int]) -> float:
    """The pipeline's ``scale`` taking the input to the output size (1 when the input is stored at target size)."""
    size = output_size(sample)
    if tuple(input_size) == size:
        return 1.0
    scale = size[0] / input_size[0]
    if (round(input_size[0] * scale), round(input_size[1] * scale)) != size:
        raise DatasetError(
            f"sample '{sample.id}': the input ({input_size[1]}×{input_size[0]}) is not a uniformly scaled version of "
            f"the output size ({size[1]}×{size[0]}, W×H)"
        )
    return scale


def read_mask(path: Path) -> torch.Tensor:
    """A subject mask file as bool ``1×H×W`` (nonzero above half = subject), read as ``render.py focus.mask=`` does."""
    return read_disparity(path) > 0.5


class SampleInputs:
    """Builds each sample's :class:`Case` for a run directory under a :class:`Protocol`.

    Args:
        protocol: input, disparity source and focus rule.
        run_dir: where estimated disparity is cached (``disparity/<id>.npy``).
        front: the pipeline front end that validates inputs, estimates disparity (its ``depth_model``: anything with
            ``predict_disparity``; built lazily by the caller so runs that need none load no weights) and picks
            the focus; default a :class:`~magicbokeh.evaluation.baselines.BicubicPipeline` without a depth model.
    """

    def __init__(self, protocol: Protocol, run_dir: str | os.PathLike, front: BokehPipeline | None = None):
        self.protocol = protocol
        self.run_dir = Path(run_dir)
        self.front = front if front is not None else BicubicPipeline()
        self.estimated = 0
        self.reused = 0

    def needs_depth(self, sample: BenchmarkSample) -> bool:
        """True when the sample's disparity comes from the depth model (and hence from the cache)."""
        if sample.K == 0 and sample.disparity is None:
            return False  # pure SR: the defocus is zero whatever the disparity
        if self.protocol.disparity == "gt":
            return False
        return self.protocol.disparity != "index" or sample.disparity is None

    def depth_image(self, sample: BenchmarkSample, images: torch.Tensor) -> torch.Tensor:
        """What the depth model sees: the method input (``index``, ``estimate``), or the image the source names."""
        if self.protocol.disparity in ("index", "estimate"):
            return images
        key = depth_source(self.protocol.disparity).image
        path = sample.lq if key == "lq" else sample.hq
        if path is None:
            raise DatasetError(
                f"benchmark.disparity={self.protocol.disparity} needs the '{key}' image of sample '{sample.id}'"
            )
        return read_image(path).unsqueeze(0)

    def cache_path(self, sample: BenchmarkSample) -> Path:
        return self.run_dir / DISPARITY_CACHE / f"{check_sample_id(sample.id)}.npy"

    def is_cached(self, sample: BenchmarkSample) -> bool:
        return not self.needs_depth(sample) or self.cache_path(sample).is_file()

    def input_image(self, sample: BenchmarkSample) -> torch.Tensor:
        source = sample.lq if self.protocol.input == "lq" else sample.hq
        if source is None:
            raise DatasetError(f"sample '{sample.id}' has no '{self.protocol.input}' image (the benchmark input)")
        return read_image(source).unsqueeze(0)

    def _disparity(self, sample: BenchmarkSample, images: torch.Tensor, estimate: bool) -> torch.Tensor | None:
        if not self.needs_depth(sample):
            if sample.disparity is None and self.protocol.disparity == "gt" and sample.K != 0:
                raise DatasetError(
                    f"benchmark.disparity=gt but sample '{sample.id}' has no disparity map: use a benchmark with "
                    "ground-truth maps (synthetic), or estimate (student_lq, teacher_lq, teacher_hq, estimate)"
                )
            return read_disparity(sample.disparity) if sample.disparity is not None else None
        path = self.cache_path(sample)
        if path.is_file():
            self.reused += 1
            return read_disparity(path)
        if not estimate:
            raise DatasetError(
                f"the estimated disparity of sample '{sample.id}' is not in '{path.parent}': run the predict stage "
                "(it estimates and caches it)"
            )
        disparity = self.front.estimate_disparity(self.depth_image(sample, images))
        if disparity.shape[-2:] not in (images.shape[-2:], output_size(sample)):
            # The source image (e.g. an LQ stored at low resolution while the input is the HQ) has another size: the
            # map follows the method input, as a map given with it must.
            disparity = resize_images(disparity, tuple(images.shape[-2:]))
        write_disparity(path, disparity)
        self.estimated += 1
        return disparity

    def _focus(self, sample: BenchmarkSample, prepared: Prepared, has_disparity: bool) -> float:
        rule = self.protocol.focus
        if not has_disparity:
            return 0.0  # pure SR: zero defocus at any focus
        if rule == "mask":
            if sample.mask is None:
                raise DatasetError(f"benchmark.focus=mask but sample '{sample.id}' has no subject mask")
            return self.front.focus_disparity(prepared, mask=read_mask(sample.mask))
        focus: Focus
        if rule == "index":
            if sample.focus_disparity is None:
                raise DatasetError(
                    f"sample '{sample.id}' has no focus_disparity: evaluate with benchmark.focus=mask (its subject "
                    "mask), auto, or a value"
                )
            focus = float(sample.focus_disparity)
        else:
            focus = rule if isinstance(rule, str) else float(rule)
        return self.front.focus_disparity(prepared, focus=focus)

    def case(self, sample: BenchmarkSample, *, estimate: bool = True) -> Case:
        """The sample's input, prepared; ``estimate=False`` (scoring) refuses to run the depth model."""
        images = self.input_image(sample)
        disparity = self._disparity(sample, images, estimate)
        has_disparity = disparity is not None
        if disparity is None:
            disparity = torch.zeros(1, 1, *images.shape[-2:])
        prepared = self.front.prepare(images, scale=input_scale(sample, images.shape[-2:]), disparity=disparity)
        return Case(prepared, self._focus(sample, prepared, has_disparity), float(sample.K), has_disparity)
