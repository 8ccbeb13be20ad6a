"""peft LoRA adapters of the released model (DESIGN §1; same target rule as the official release / OSEDiff).

* UNet "SR LoRA": one adapter on every matching Linear/Conv2d weight of the down blocks + ``conv_in`` and of the
  up blocks + ``conv_out`` (the release keeps these as two adapters of equal rank, ``default_encoder`` and
  ``default_decoder``; one adapter over the union is the same function with the same weights).
* VAE-encoder LoRA: matching weights inside ``encoder`` plus ``quant_conv``; the decoder stays untouched.

The rule (a parameter name containing one of the patterns, skipping biases and norms) mirrors the release so that
its checkpoints map one-to-one onto ours (see :mod:`magicbokeh.models.checkpoint`).
"""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from magicbokeh.errors import ConfigError

UNET_LORA_PATTERNS = (
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
    "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj",
)  # fmt: skip
VAE_LORA_PATTERNS = (
    "conv1",
    "conv2",
    "conv_in",
    "conv_shortcut",
    "conv",
    "conv_out",
    "to_k",
    "to_q",
    "to_v",
    "to_out.0",
)
UNET_ADAPTER = "sr"
VAE_ADAPTER = "vae"


def _weight_names(model: nn.Module) -> list[str]:
    """Names of LoRA-able layers: modules owning a ``.weight`` that is neither a bias nor a normalisation."""
    return [
        name.removesuffix(".weight")
        for name, _ in model.named_parameters()
        if name.endswith(".weight") and "norm" not in name
    ]


def unet_lora_targets(unet: nn.Module) -> tuple[list[str], list[str]]:
    """(down-path targets: down blocks + conv_in, up-path targets: up blocks + conv_out), as module names."""
    down, up = [], []
    for name in _weight_names(unet):
        if not any(pattern in name for pattern in UNET_LORA_PATTERNS):
            continue
        if name.startswith("down_blocks.") or name == "conv_in":
            down.append(name)
        elif name.startswith("up_blocks.") or name == "conv_out":
            up.append(name)
    return down, up


def vae_lora_targets(vae: nn.Module) -> list[str]:
    """VAE-encoder targets: matching layers inside ``encoder`` plus ``quant_conv`` (never ``post_quant_conv``)."""
    return [
        name
        for name in _weight_names(vae)
        if (name.startswith("encoder.") and any(pattern in name for pattern in VAE_LORA_PATTERNS))
        or name == "quant_conv"
    ]


def _inject(model: nn.Module, targets: list[str], rank: int, alpha: float, adapter: str) -> None:
    if rank < 1:
        raise ConfigError(f"LoRA rank must be ≥ 1, got {rank}")
    if not targets:
        raise ConfigError(f"no LoRA target found for adapter '{adapter}'")
    # Gaussian A and zero B: the adapter starts as an exact no-op (peft's "gaussian" init, as in the release).
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian")
    inject_adapter_in_model(config, model, adapter_name=adapter)


def add_unet_sr_lora(unet: nn.Module, rank: int, alpha: float) -> list[str]:
    """Wrap the UNet SR-LoRA targets in place; returns the target module names."""
    down, up = unet_lora_targets(unet)
    _inject(unet, down + up, rank, alpha, UNET_ADAPTER)
    return down + up


def add_vae_encoder_lora(vae: nn.Module, rank: int, alpha: float) -> list[str]:
    """Wrap the VAE-encoder LoRA targets in place; returns the target module names."""
    targets = vae_lora_targets(vae)
    _inject(vae, targets, rank, alpha, VAE_ADAPTER)
    return targets
