"""The defocus injector: a stock diffusers ControlNet copied from the UNet, fed the defocus condition.

Its conditioning embedding (conv stack, zero-initialised last conv) turns the 3-channel defocus condition in
[−1, 1] into a feature map added after the ControlNet's ``conv_in``; its down-block residuals (zero-initialised 1×1
convs) are added to the UNet skip connections. Both zero inits mean that, at initialisation, the defocus map has
no effect on the output. The embedding downsamples by the VAE's factor so that it lands on the latent grid.
"""

from __future__ import annotations

import math

from diffusers import ControlNetModel, UNet2DConditionModel

from magicbokeh.errors import ConfigError

CONDITIONING_CHANNELS = (16, 32, 96, 256)
"""diffusers' default embedding widths: three stride-2 stages for SD's ×8 VAE; fewer stages for smaller VAEs."""


def build_defocus_controlnet(unet: UNet2DConditionModel, vae_scale_factor: int) -> ControlNetModel:
    """ControlNet initialised from ``unet`` (conv_in, time embedding, down blocks and mid block copied).

    Build it from the stock UNet, *before* surgery; apply the same surgery to both afterwards.
    """
    stages = round(math.log2(vae_scale_factor))
    if 2**stages != vae_scale_factor or stages >= len(CONDITIONING_CHANNELS):
        raise ConfigError(f"the VAE downsampling factor must be 1, 2, 4 or 8, got {vae_scale_factor}")
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS[: stages + 1])
