"""Inference presets: our defaults, and the official release's inference step for step (``preset=release``).

A preset fixes the steps around the network; the render CLI, the evaluation runner and the demo read a pipeline's
default K and scale from here (``MagicBokehPipeline(..., preset=...).default_K`` / ``.default_scale``).
``release`` differs from ``default`` (ours) in these steps (the README's "Rendering photos" says why ours differ):

* output size and strength: input × 1 and K = 32 (ours: × 4, K = 16);
* disparity: truncated to 8 bits, ``floor(255·d)/255``, before focus and defocus (ours: float);
* image size: at least 512 × 512, nothing padded (ours: any; a side that fits in a tile is padded to the stride);
* tile weights: ramps only on the sides that touch another tile, ``linspace(0, 1, 256)`` (ours: every side, > 0);
* colour fix: the output truncated to 8 bits, AdaIN, truncated again (ours: AdaIN in float);
* focus from a mask: the lower middle value (``torch.median``; ours: the mean of the two middle values);
* focus from a click: the disparity of the pixel ``(int(x), int(y))`` (ours: median of the surface around it);
* depth input: the bicubic resize is not clamped, DINOv2's position embeddings are resized by ``(n + 0.1)/37``
  (ours: clamped, resized to the patch grid).

Both presets raise an error on an empty subject mask (the release silently focuses at disparity 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from magicbokeh.errors import ConfigError


@dataclass(frozen=True)
class InferencePreset:
    """What a preset fixes; the table of the module docstring says what each value means."""

    name: str
    K: float
    scale: float
    tile_size: int
    tile_stride: int
    color_fix: str
    blend: Literal["ramp", "release"]
    disparity_8bit: bool  # disparity truncated to 8-bit levels before focus and defocus
    output_8bit: bool  # output truncated to 8-bit levels before and after the colour fix
    min_size: int  # smallest output side accepted (0: any)
    focus_rules: Literal["robust", "release"]
    depth_preprocessing: Literal["default", "release"]


PRESETS: dict[str, InferencePreset] = {
    "default": InferencePreset(
        name="default",
        K=16.0,
        scale=4.0,
        tile_size=512,
        tile_stride=256,
        color_fix="adain",
        blend="ramp",
        disparity_8bit=False,
        output_8bit=False,
        min_size=0,
        focus_rules="robust",
        depth_preprocessing="default",
    ),
    "release": InferencePreset(
        name="release",
        K=32.0,
        scale=1.0,
        tile_size=512,
        tile_stride=256,
        color_fix="adain",
        blend="release",
        disparity_8bit=True,
        output_8bit=True,
        min_size=512,
        focus_rules="release",
        depth_preprocessing="release",
    ),
}


def get_preset(name: str | InferencePreset) -> InferencePreset:
    """The preset called ``name`` (a preset is returned as it is); :class:`ConfigError` naming the choices otherwise.

    Passing an :class:`InferencePreset` lets a study change one step, e.g.
    ``dataclasses.replace(PRESETS["release"], blend="ramp")``.
    """
    if isinstance(name, InferencePreset):
        return name
    if name not in PRESETS:
        raise ConfigError(f"unknown inference preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
