"""Tiny MagicBokeh models built from configs/model/tiny.yaml (random weights, a fraction of a second each)."""

from __future__ import annotations

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from magicbokeh.utils.config import CONFIG_DIR


@pytest.fixture(scope="session")
def tiny_model_config():
    return OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml")


@pytest.fixture
def make_tiny_model(tiny_model_config):
    """Factory: ``make_tiny_model(seed=0, **overrides)`` → a fresh tiny MagicBokehModel in eval mode."""

    def make(seed: int = 0, **overrides):
        torch.manual_seed(seed)  # module construction draws its random init from the global RNG
        cfg = OmegaConf.merge(tiny_model_config, overrides)
        return hydra.utils.instantiate(cfg).eval()

    return make


def randomize(parameters, seed: int = 1, std: float = 0.05) -> None:
    """Give parameters (e.g. zero-initialised LoRA B / zero convs) non-trivial values, reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in parameters:
            param.add_(torch.randn(param.shape, generator=generator) * std)


def inputs(batch: int = 2, height: int = 32, width: int = 48, seed: int = 0):
    """LQ images in [0, 1] and a defocus map with a sharp in-focus disc and a blurred background."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, height, width, generator=generator)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    defocus = ((ys**2 + xs**2).sqrt() * 0.8).clamp(0, 1).expand(batch, 1, height, width).contiguous()
    return images, defocus
