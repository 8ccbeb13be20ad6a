"""The physics of defocus: circle of confusion, the defocus map, aperture kernels, classical renderers (pure torch)."""

from magicbokeh.optics.aperture import ApertureSpec, aperture_kernel, as_aperture
from magicbokeh.optics.coc import K_MAX, K_for_blur_px, blur_px_for_K, check_K, coc_radius_px
from magicbokeh.optics.defocus import IN_FOCUS_THRESHOLD, defocus_bands, defocus_map, in_focus_mask
from magicbokeh.optics.render import BokehRenderer, HighlightBoost, from_linear, render_bokeh, render_layers, to_linear

__all__ = [
    "IN_FOCUS_THRESHOLD",
    "K_MAX",
    "ApertureSpec",
    "BokehRenderer",
    "HighlightBoost",
    "K_for_blur_px",
    "aperture_kernel",
    "as_aperture",
    "blur_px_for_K",
    "check_K",
    "coc_radius_px",
    "defocus_bands",
    "defocus_map",
    "from_linear",
    "in_focus_mask",
    "render_bokeh",
    "render_layers",
    "to_linear",
]
