"""Methods the evaluation runner compares, all behind one interface.

A *method* maps an input already resized to the target size (``images`` B×3×H×W in [0, 1]) plus the scene's
``disparity`` (B×1×H×W), ``focus_disparity`` (B) and strength ``K`` (B) to output images B×3×H×W in [0, 1]:

- ``model``            the unified network, one pass with ``defocus = |d − d_f|·K/32``;
- ``bicubic``          the bicubic-upsampled input, nothing else (the floor every method must beat);
- ``bicubic_renderer`` bicubic input, then the classical renderer;
- ``two_stage``        the network in SR mode (all-zero defocus), then the classical renderer — the paper's
                       "ISR → bokeh" two-stage design (Table 1) with our own SR model as the ISR stage;
- ``model_two_pass``   the network in SR mode, then the same network again in bokeh mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from magicbokeh.errors import ConfigError, ParameterError
from magicbokeh.optics.defocus import defocus_map

MODEL_METHODS = ("model", "two_stage", "model_two_pass")
RENDERER_METHODS = ("bicubic_renderer", "two_stage")
METHODS = ("model", "bicubic", "bicubic_renderer", "two_stage", "model_two_pass")

# (images, disparity, focus_disparity, K) -> images
Renderer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def run_model_padded(
    model: torch.nn.Module,
    images: torch.Tensor,
    defocus: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One network pass on images whose size need not be a multiple of ``model.stride``.

    Pads on the bottom/right by reflection (keeps image statistics at the border, unlike zeros) and crops back. For
    benchmark images up to ~512 px a direct call is enough; larger images belong to the tiled inference pipeline.
    """
    stride = model.stride
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % stride, (-width) % stride
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        images = F.pad(images, (0, pad_w, 0, pad_h), mode=mode)
        defocus = F.pad(defocus, (0, pad_w, 0, pad_h), mode=mode)
    param = next(model.parameters())
    with torch.no_grad():
        out = model(images.to(param.device, param.dtype), defocus.to(param.device, param.dtype), generator=generator)
    return out[..., :height, :width].float().cpu()


@dataclass
class Method:
    """A named prediction function; ``stochastic`` methods are run once per seed, the others once."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator | None], torch.Tensor]
    stochastic: bool = False

    def __call__(
        self,
        images: torch.Tensor,
        disparity: torch.Tensor,
        focus_disparity: torch.Tensor,
        K: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return self.fn(images, disparity, focus_disparity, K, generator).clamp(0.0, 1.0)


def build_method(
    name: str,
    *,
    model: torch.nn.Module | None = None,
    renderer: Renderer | None = None,
    sample_posterior: bool = False,
) -> Method:
    """Build one of :data:`METHODS`. ``sample_posterior`` makes the network draw its VAE latent from the posterior
    with the per-image generator (several seeds then differ); otherwise it uses the posterior mean (deterministic).
    """
    if name not in METHODS:
        raise ParameterError(f"unknown evaluation method '{name}'; choose from {', '.join(METHODS)}")
    if name in MODEL_METHODS and model is None:
        raise ConfigError(f"method '{name}' needs a model checkpoint: pass ckpt=/path/to/checkpoint")
    if name in RENDERER_METHODS and renderer is None:
        raise ConfigError(f"method '{name}' needs the classical renderer")

    def net(images, defocus, generator):
        return run_model_padded(model, images, defocus, generator if sample_posterior else None)

    def zeros(disparity):
        return torch.zeros_like(disparity)

    def model_fn(images, disparity, focus, K, generator):
        return net(images, defocus_map(disparity, focus, K), generator)

    def bicubic_fn(images, disparity, focus, K, generator):
        return images

    def bicubic_renderer_fn(images, disparity, focus, K, generator):
        return renderer(images, disparity, focus, K)

    def two_stage_fn(images, disparity, focus, K, generator):
        return renderer(net(images, zeros(disparity), generator), disparity, focus, K)

    def two_pass_fn(images, disparity, focus, K, generator):
        sr = net(images, zeros(disparity), generator)
        return net(sr, defocus_map(disparity, focus, K), generator)

    functions = {
        "model": model_fn,
        "bicubic": bicubic_fn,
        "bicubic_renderer": bicubic_renderer_fn,
        "two_stage": two_stage_fn,
        "model_two_pass": two_pass_fn,
    }
    return Method(name, functions[name], stochastic=sample_posterior and name in MODEL_METHODS)
