"""MagicBokeh: one-step diffusion for joint super-resolution and controllable bokeh (training and evaluation)."""

from magicbokeh.errors import MagicBokehError

__version__ = "0.1.0"
__all__ = ["MagicBokehError", "__version__"]
