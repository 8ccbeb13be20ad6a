"""Build a :class:`MagicBokehModel` from a local SD2.1-base folder or from config dicts (tiny test models).

Order matters and mirrors the release: the ControlNet is copied from the *stock* UNet, then the same surgery is
applied to both (mid block pruned, cross-attention dropped), then the peft LoRA adapters are added, and last the
FAMA processors are installed on the ``attn1`` layers ``model.fama.layers`` selects (up blocks as released), so
their parameters are not LoRA targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from magicbokeh.errors import ConfigError, missing_weights
from magicbokeh.models import surgery
from magicbokeh.models.attention import FamaSettings, install_focus_processors
from magicbokeh.models.controlnet import build_defocus_controlnet
from magicbokeh.models.lora import add_unet_sr_lora, add_vae_encoder_lora
from magicbokeh.models.model import MagicBokehModel

SD21_SOURCE = "https://huggingface.co/stabilityai/stable-diffusion-2-1-base"
SD21_CONFIG_KEY = "paths.sd21"

# Stable Diffusion 2.1-base architecture (from its published configs), used to time the full-size network with
# random weights; real runs load the folder at ``paths.sd21`` instead.
SD21_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
SD21_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD21_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
}


def _plain(value: Any) -> Any:
    """Hydra DictConfig/ListConfig and tuples → JSON-able dicts/lists (the build config is saved as JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def fama_from_build_arguments(
    fama: FamaSettings | Mapping[str, Any] | None,
    *,
    bokeh_lora_rank: int | None = None,
    bokeh_lora_alpha: float | None = None,
    use_focus_mask: bool | None = None,
    attention_backend: str | None = None,
) -> FamaSettings:
    """``fama`` with the pre-``fama`` flat build arguments mapped onto it (see :func:`build_model`)."""
    settings = FamaSettings.from_config(fama).to_config()
    legacy = {
        "rank": bokeh_lora_rank,
        "alpha": bokeh_lora_alpha,
        "mask": None if use_focus_mask is None else ("hard" if use_focus_mask else "none"),
        "backend": attention_backend,
    }
    settings.update({key: value for key, value in legacy.items() if value is not None})
    return FamaSettings(**settings)


def check_sd21_folder(root: Path) -> None:
    """Fail with one actionable error naming the first missing file of the diffusers layout."""
    if not root.is_dir():
        raise missing_weights(str(root), SD21_CONFIG_KEY, SD21_SOURCE)
    for sub, config in (("unet", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json")):
        if not (root / sub / config).is_file():
            raise missing_weights(str(root / sub / config), SD21_CONFIG_KEY, SD21_SOURCE)
    for sub in ("unet", "vae"):
        if not any((root / sub).glob("diffusion_pytorch_model*")):
            raise missing_weights(str(root / sub / "diffusion_pytorch_model.safetensors"), SD21_CONFIG_KEY, SD21_SOURCE)


def _load_components(sd21_path, unet_config, vae_config, scheduler_config):
    if sd21_path is not None:
        if unet_config is not None or vae_config is not None:
            raise ConfigError("give either sd21_path (pretrained weights) or unet_config/vae_config (random), not both")
        root = Path(sd21_path).expanduser()
        check_sd21_folder(root)
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True)
        return unet, vae, scheduler
    if unet_config is None or vae_config is None:
        raise ConfigError("give sd21_path, or both unet_config and vae_config")
    unet = UNet2DConditionModel.from_config(unet_config)
    vae = AutoencoderKL.from_config(vae_config)
    scheduler = DDPMScheduler.from_config(scheduler_config or SD21_SCHEDULER_CONFIG)
    return unet, vae, scheduler


def build_model(
    sd21_path: str | None = None,
    *,
    name: str = "custom",
    unet_config: Mapping[str, Any] | None = None,
    vae_config: Mapping[str, Any] | None = None,
    scheduler_config: Mapping[str, Any] | None = None,
    prune_mid_block: bool = True,
    drop_cross_attention: bool = True,
    vae_lora_rank: int = 4,
    vae_lora_alpha: float = 8.0,
    unet_lora_rank: int = 4,
    unet_lora_alpha: float = 8.0,
    fama: FamaSettings | Mapping[str, Any] | None = None,
    gradient_checkpointing: bool = False,
    timestep: int = 999,
    bokeh_lora_rank: int | None = None,
    bokeh_lora_alpha: float | None = None,
    use_focus_mask: bool | None = None,
    attention_backend: str | None = None,
) -> MagicBokehModel:
    """Build the MagicBokeh network (what ``configs/model/*.yaml`` instantiate).

    ``sd21_path``: local SD2.1-base folder in diffusers layout (``unet/``, ``vae/``, ``scheduler/``); a missing file
    raises :class:`MissingWeightsError`. Otherwise ``unet_config``/``vae_config`` dicts build a randomly initialised
    network (tests, smoke run, benchmark). LoRA scales are ``alpha / rank``; the defaults of the VAE and UNet
    adapters (rank 4, alpha 8) are those the release trained with (peft's default alpha, OSEDiff's rank).
    ``name`` only labels the configuration (logs, checkpoints). ``fama`` (``model.fama``, a
    :class:`~magicbokeh.models.attention.FamaSettings` or its dict) sets the focus-aware attention: its layers, mask
    (``hard``, ``none`` = ``ablation_no_fama``, ``soft``, ``levels:N``), in-focus threshold, bokeh-LoRA rank and
    alpha, and backend (the same values and weights, a different speed and memory per device).

    ``bokeh_lora_rank``, ``bokeh_lora_alpha``, ``use_focus_mask`` and ``attention_backend`` are the flat names that
    ``config.json`` files written before ``fama`` existed hold (our checkpoints, the official importer's): when
    given they set ``fama.rank``, ``fama.alpha``, ``fama.mask`` (true → ``hard``, false → ``none``) and
    ``fama.backend``, over ``fama``. A model records only ``fama``.
    """
    fama_settings = fama_from_build_arguments(
        fama, bokeh_lora_rank=bokeh_lora_rank, bokeh_lora_alpha=bokeh_lora_alpha, use_focus_mask=use_focus_mask,
        attention_backend=attention_backend,
    )  # fmt: skip
    config = _plain(
        {
            "name": name,
            "sd21_path": None if sd21_path is None else str(sd21_path),
            "unet_config": unet_config,
            "vae_config": vae_config,
            "scheduler_config": scheduler_config,
            "prune_mid_block": prune_mid_block,
            "drop_cross_attention": drop_cross_attention,
            "vae_lora_rank": vae_lora_rank,
            "vae_lora_alpha": vae_lora_alpha,
            "unet_lora_rank": unet_lora_rank,
            "unet_lora_alpha": unet_lora_alpha,
            "fama": fama_settings.to_config(),
            "gradient_checkpointing": gradient_checkpointing,
            "timestep": timestep,
        }
    )
    unet, vae, scheduler = _load_components(
        config["sd21_path"], config["unet_config"], config["vae_config"], config["scheduler_config"]
    )
    if scheduler.config.prediction_type != "epsilon":
        raise ConfigError(
            f"the one-step x0 formula needs an ε-prediction model, got '{scheduler.config.prediction_type}' "
            "(use stable-diffusion-2-1-base, not the 768-px v-prediction model)"
        )
    if not 0 <= timestep < scheduler.config.num_train_timesteps:
        raise ConfigError(f"timestep must be in [0, {scheduler.config.num_train_timesteps}), got {timestep}")
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    controlnet = build_defocus_controlnet(unet, vae_scale_factor)
    for module in (unet, controlnet):
        if drop_cross_attention:
            surgery.drop_cross_attention(module)
        if prune_mid_block:
            surgery.prune_mid_block(module)
    add_unet_sr_lora(unet, unet_lora_rank, unet_lora_alpha)
    add_vae_encoder_lora(vae, vae_lora_rank, vae_lora_alpha)
    install_focus_processors(
        unet, fama_settings.rank, fama_settings.alpha, fama_settings.backend, layers=fama_settings.layers
    )

    model = MagicBokehModel(
        vae=vae,
        unet=unet,
        controlnet=controlnet,
        alphas_cumprod=scheduler.alphas_cumprod.to(torch.float32),
        config=config,
    )
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model
