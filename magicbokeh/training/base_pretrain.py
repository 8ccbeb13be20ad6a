"""A stand-in for SD2.1's pretrained VAE when the network is randomly initialised (the tiny smoke model).

MagicBokeh keeps the VAE decoder frozen and only adds LoRA to the encoder, so it relies on a VAE that already
reconstructs images. A random tiny VAE does not: even the best possible latent decodes to ~16 dB on smooth images,
below any upsampling baseline. Before the alternating training starts, :func:`fit_autoencoder` therefore fits the
tiny VAE's *base* weights (encoder + decoder, not the LoRA) as a plain autoencoder on the training targets,

    min  MSE(decode(encode(x)), x)

which plays the role of SD2.1's VAE pre-training. It never runs for a model loaded from ``paths.sd21``. The result
is the "initialisation" the smoke run's final table compares against (the network MagicBokeh training starts from).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from magicbokeh.errors import ConfigError
from magicbokeh.training.data_streams import BatchStream
from magicbokeh.training.optim import build_lr_scheduler
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)


def fit_autoencoder(
    model: torch.nn.Module, streams: Sequence[BatchStream], steps: int, lr: float, device: torch.device
) -> float:
    """Train ``model.vae``'s base weights to reconstruct the streams' targets (round-robin); returns the last loss."""
    if model.has_pretrained_base:
        raise ConfigError("trainer.base_pretrain is for randomly initialised models; this one loads paths.sd21")
    if not streams:
        raise ConfigError("trainer.base_pretrain needs at least one data stream")
    base = [param for name, param in model.vae.named_parameters() if ".lora_" not in name]
    for param in model.parameters():
        param.requires_grad_(False)
    for param in base:
        param.requires_grad_(True)
    optimizer = torch.optim.Adam(base, lr=lr)
    # Cosine decay to zero: the last, small steps are what bring the reconstruction error down.
    scheduler = build_lr_scheduler(optimizer, warmup_steps=0, schedule="cosine", total_steps=steps)
    loss = torch.tensor(float("nan"))
    progress = tqdm(range(steps), desc="vae pretrain (stand-in for SD2.1)", dynamic_ncols=True)
    for step in progress:
        images = next(streams[step % len(streams)])["target"].to(device)
        loss = F.mse_loss(model.decode(model.encode(images)), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
    for param in base:
        param.requires_grad_(False)
        param.grad = None
    logger.info("tiny VAE fitted as an autoencoder for %d steps (final MSE %.4g)", steps, loss.item())
    return float(loss.item())
