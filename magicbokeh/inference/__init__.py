"""Inference: the any-size pipeline, tiling, colour fix, sweeps, and the body of ``scripts/render.py``."""

from magicbokeh.inference.color_fix import color_fix
from magicbokeh.inference.pipeline import BokehPipeline, MagicBokehPipeline, PipelineOutput
from magicbokeh.inference.tiling import run_tiled

__all__ = ["BokehPipeline", "MagicBokehPipeline", "PipelineOutput", "color_fix", "run_tiled"]
