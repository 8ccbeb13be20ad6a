"""Write a MagicBokehModel the way the official release stores its ``lora.pkl`` (tests of the importer and of the
release-parity pipeline build their "official" checkpoints with this)."""

from __future__ import annotations

import copy
import sys
import types

import torch
from diffusers import ControlNetModel

from magicbokeh.models.model import parameter_group


def write_official_checkpoint(model, path, monkeypatch) -> None:
    """Write ``model``'s trainable weights as the release does: one torch.save pickle with a ControlNet object."""
    state = model.state_dict()
    down = ("unet.down_blocks.", "unet.conv_in.")

    def unet_key(name):
        adapter = "default_encoder" if name.startswith(down) else "default_decoder"
        return name.removeprefix("unet.").replace(".sr.", f".{adapter}.")

    lora_modules = {
        n.removeprefix("unet.").split(".lora_A.")[0] for n in state if n.startswith("unet.") and ".lora_A." in n
    }
    # The release's ControlNet class lives in its own "models.controlnet" module and has no mid-block residual conv.
    official_module = types.ModuleType("models.controlnet")
    official_class = type("ControlNetModel", (ControlNetModel,), {"__module__": "models.controlnet"})
    official_module.ControlNetModel = official_class
    monkeypatch.setitem(sys.modules, "models", types.ModuleType("models"))
    monkeypatch.setitem(sys.modules, "models.controlnet", official_module)
    controlnet = copy.deepcopy(model.controlnet)
    del controlnet.controlnet_mid_block
    controlnet.__class__ = official_class
    document = {
        "rank_unet": model.config["unet_lora_rank"],
        "unet_lora_encoder_modules": sorted(m for m in lora_modules if f"unet.{m}".startswith(down)),
        "unet_lora_decoder_modules": sorted(m for m in lora_modules if not f"unet.{m}".startswith(down)),
        "state_dict_unet": {unet_key(n): t for n, t in state.items() if parameter_group(n) in ("sr_lora", "conv_in")},
        "rank_vae": model.config["vae_lora_rank"],
        "vae_lora_encoder_modules": sorted(
            {n.removeprefix("vae.").split(".lora_")[0] for n in state if ".lora_" in n and n.startswith("vae.")}
        ),
        "state_dict_vae": {
            n.removeprefix("vae.").replace(".vae.", ".default_encoder."): t
            for n, t in state.items()
            if parameter_group(n) == "vae_lora"
        },
        "controlnet": controlnet,
        "state_dict_attn": model.config["fama"]["rank"],
        "processor_state_dict": {
            n.removeprefix("unet."): t for n, t in state.items() if parameter_group(n) == "bokeh_lora"
        },
    }
    torch.save(document, path)
