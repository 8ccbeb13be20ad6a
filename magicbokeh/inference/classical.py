"""The CLI's ``mode=classical``: the same inputs (photo, disparity, focus, K, scale) rendered by the optics
renderer instead of the network: the bicubic + classical-bokeh two-stage baseline, with no weights at all.

The strength K maps to the renderer's blur exactly as for training pairs (DESIGN §3):
``blur_px = max_coc_px · K / 32`` (:meth:`magicbokeh.optics.BokehRenderer.blur_px`), ``max_coc_px``
(``configs/renderer``) being the circle-of-confusion radius at defocus 1 at the output resolution.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from magicbokeh.inference.pipeline import BokehPipeline, PipelineOutput, Prepared
from magicbokeh.optics import BokehRenderer
from magicbokeh.optics.defocus import defocus_map


class ClassicalPipeline(BokehPipeline):
    """Bicubic upsampling + a classical :class:`~magicbokeh.optics.BokehRenderer` over the whole image.

    Args:
        renderer: the renderer settings (``hydra.utils.instantiate(cfg.renderer)``).
        device: where the renderer runs (its FFTs are much faster on a GPU).
        depth_model, saliency_model: see :class:`BokehPipeline`.
    """

    def __init__(
        self,
        renderer: BokehRenderer,
        *,
        device: torch.device | str = "cpu",
        depth_model: object | None = None,
        saliency_model: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        super().__init__(depth_model, saliency_model)
        self.renderer = renderer
        self.device = torch.device(device)

    def render(self, prepared: Prepared, focus_disparity: float, K: float) -> PipelineOutput:
        defocus = defocus_map(prepared.disparity_out, focus_disparity, K)  # validates K and focus too
        with torch.inference_mode():
            image = self.renderer(
                prepared.upsampled.to(self.device), prepared.disparity_out.to(self.device), focus_disparity, K
            )
        return PipelineOutput(image.float().cpu(), prepared.disparity_out, defocus, float(focus_disparity))
