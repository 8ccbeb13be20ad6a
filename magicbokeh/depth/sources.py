"""Where a defocus condition's disparity comes from: the depth axis of the ablations (REFERENCE §1.5, §4.3).

The same four names are used for training (``trainer.defocus_depth.source``) and, separately, for evaluation
(``benchmark.disparity``)::

    gt          the ground-truth disparity of the data (synthetic scenes, or the maps stored with the photos)
    teacher_lq  the frozen Depth-Anything teacher (clean-image model, ``paths.depth_anything``) on the LQ input:
                the paper's "w/o DA depth"
    student_lq  the distilled degradation-aware student (``paths.da_depth``) on the LQ input: the paper's DA depth,
                what the model sees at inference
    teacher_hq  the teacher on the clean HQ image at the target size: an upper bound no real input allows
"""

from __future__ import annotations

from dataclasses import dataclass

from magicbokeh.errors import ConfigError

DEPTH_SOURCES = ("gt", "teacher_lq", "student_lq", "teacher_hq")


@dataclass(frozen=True)
class DepthSource:
    """One of :data:`DEPTH_SOURCES`, split into the depth model it runs (None for ``gt``) and the image it sees."""

    name: str
    model: str | None  # "teacher" | "student" | None
    image: str | None  # "lq" | "hq" | None

    @property
    def estimated(self) -> bool:
        return self.model is not None


def depth_source(name: str) -> DepthSource:
    """Parse a source name (module docstring); anything else is a :class:`ConfigError` listing the choices."""
    if name not in DEPTH_SOURCES:
        raise ConfigError(f"unknown disparity source '{name}'; expected one of {', '.join(DEPTH_SOURCES)}")
    if name == "gt":
        return DepthSource(name, None, None)
    model, image = name.split("_")
    return DepthSource(name, model, image)
