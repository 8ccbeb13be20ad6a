"""Inference presets: our defaults, and the official release's inference step for step (``preset=release``).

A preset fixes the steps around the network; the render CLI, the evaluation runner and the demo read a pipeline's
default K and scale from here (``MagicBokehPipeline(..., preset=...).default_K`` / ``.default_scale``).

| step | ``default`` (ours) | ``release`` (``inference.py`` / ``demo.py`` of the official code) |
|---|---|---|
| output size, K | input × 4, K = 16 | input × 1, K = 32 |
| disparity | float | truncated to 8 bits (``floor(255·d)/255``) before focus and defocus |
| image size | any: a side shorter than a tile is padded to the model stride only | ≥ 512 × 512, nothing padded |
| tile weights | ramps on every side, all weights > 0 | ramps only on sides touching another tile, ``linspace(0, 1, 256)`` |
| colour fix | AdaIN in float | output truncated to 8 bits, AdaIN, truncated again |
| focus from a mask | mean of the two middle values (numpy's median) | lower middle value (``torch.median``) |
| focus from a click | median of the edge-free surface in a 9 × 9 window | disparity of the clicked pixel (coordinates truncated) |
| depth input | bicubic resize clamped to [0, 1]; position embeddings resized to the patch grid | no clamp; embeddings resized by ``(n + 0.1)/37`` |

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
    quantize: bool  # 8-bit truncation of the disparity and of the output around the colour fix
    min_size: int  # smallest output side accepted (0: any)
    focus_rules: Literal["robust", "release"]
    depth_preprocessing: Literal["default", "release"]


PRESETS: dict[str, InferencePreset] = {
    "default": InferencePreset(
        name="default", K=16.0, scale=4.0, tile_size=512, tile_stride=256, color_fix="adain", blend="ramp",
        quantize=False, min_size=0, focus_rules="robust", depth_preprocessing="default",
    ),  # fmt: skip
    "release": InferencePreset(
        name="release", K=32.0, scale=1.0, tile_size=512, tile_stride=256, color_fix="adain", blend="release",
        quantize=True, min_size=512, focus_rules="release", depth_preprocessing="release",
    ),  # fmt: skip
}


def get_preset(name: str) -> InferencePreset:
    """The preset called ``name``; :class:`ConfigError` naming the choices otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"unknown inference preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
