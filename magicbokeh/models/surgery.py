"""UNet/ControlNet surgery of the released model, applied to stock diffusers modules after loading (DESIGN §1).

* :func:`prune_mid_block` — the release skips the UNet mid block (and the ControlNet's); the down path feeds the
  up path directly. Speeds up the forward and removes the lowest-resolution bottleneck.
* :func:`drop_cross_attention` — the release removes every cross-attention (``attn2``/``norm2``) from the
  transformer blocks, which makes the model prompt-free: no text encoder is needed at all.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import BasicTransformerBlock
from torch import nn

from magicbokeh.errors import ConfigError


class NoMidBlockResidual(nn.Module):
    """Stands in for a ControlNet's mid-block zero-conv after pruning: the pruned mid block contributes nothing.

    It returns a scalar zero, which keeps diffusers' UNet on its ControlNet path (that path needs both residual
    arguments) while adding nothing to the bottleneck features.
    """

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return sample.new_zeros(())


def prune_mid_block(model: nn.Module) -> None:
    """Remove the mid block of a ``UNet2DConditionModel`` or ``ControlNetModel`` (both skip it when None)."""
    if getattr(model, "mid_block", None) is None:
        raise ConfigError(f"{type(model).__name__} has no mid block to prune")
    model.mid_block = None
    if hasattr(model, "controlnet_mid_block"):
        model.controlnet_mid_block = NoMidBlockResidual()
    model.register_to_config(mid_block_type=None)


def drop_cross_attention(model: nn.Module) -> int:
    """Delete ``attn2``/``norm2`` of every transformer block; returns how many were removed.

    diffusers' ``BasicTransformerBlock`` skips the cross-attention step when ``attn2`` is None, so the stock
    forward runs unchanged and ``encoder_hidden_states`` is never read.
    """
    removed = 0
    for block in model.modules():
        if isinstance(block, BasicTransformerBlock) and block.attn2 is not None:
            if block.norm_type != "layer_norm":
                raise ConfigError(f"cannot drop cross-attention of a '{block.norm_type}' transformer block")
            block.attn2 = None
            block.norm2 = None
            removed += 1
    return removed
