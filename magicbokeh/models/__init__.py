"""The MagicBokeh network: build, UNet surgery, LoRA, defocus ControlNet, FAMA, one-step forward, checkpoints.

Public names are resolved lazily, so that importing a light submodule (``magicbokeh.models.interface``) does not
import diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "build_model": "magicbokeh.models.build",
    "MagicBokehModel": "magicbokeh.models.model",
    "PHASES": "magicbokeh.models.model",
}
__all__ = ["PHASES", "MagicBokehModel", "build_model"]

if TYPE_CHECKING:
    from magicbokeh.models.build import build_model
    from magicbokeh.models.model import PHASES, MagicBokehModel


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'magicbokeh.models' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
