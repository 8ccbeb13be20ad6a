"""Degradation-aware depth: model, distillation, focus selection, depth metrics.

``DepthModel`` and ``build_depth_model`` are imported lazily, so ``magicbokeh.depth.focus`` and
``magicbokeh.depth.metrics`` stay light (no transformers import) for code that only needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from magicbokeh.depth.model import DepthModel, build_depth_model

__all__ = ["DepthModel", "build_depth_model"]


def __getattr__(name: str):
    if name in __all__:
        from magicbokeh.depth import model

        return getattr(model, name)
    raise AttributeError(f"module 'magicbokeh.depth' has no attribute '{name}'")
