"""The MagicBokeh network: LQ image + defocus map → HQ image with bokeh, in one UNet evaluation (DESIGN §1).

    z  = VAE-encoder-with-LoRA(LQ) · scaling_factor
    ε̂  = UNet(z, t=999; ControlNet(z, defocus) residuals, FAMA mask from defocus)     (no noise is added to z)
    ẑ₀ = (z − √(1−ᾱ_t)·ε̂) / √ᾱ_t
    out = frozen VAE decoder(ẑ₀ / scaling_factor), clamped

Trainable groups (alternating strategy, REFERENCE §1.4) are named here, never switched inside ``forward``:

    sr_pretrain  VAE-encoder LoRA + UNet SR LoRA + UNet conv_in (fully)
    bokeh        ControlNet (whole) + FAMA bokeh LoRA
    sr           UNet SR LoRA
    joint        all of the above (the "no alternating strategy" ablation)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from magicbokeh.errors import ConfigError, InvalidInputError, MissingWeightsError
from magicbokeh.models.attention import FOCUS_KWARG, FamaSettings
from magicbokeh.models.interface import defocus_to_condition, images_to_pixel_values, pixel_values_to_images
from magicbokeh.utils.files import atomic_path, atomic_write_text
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

_PHASE_GROUPS = {
    "sr_pretrain": ("vae_lora", "sr_lora", "conv_in"),
    "bokeh": ("controlnet", "bokeh_lora"),
    "sr": ("sr_lora",),
    "joint": ("vae_lora", "sr_lora", "conv_in", "controlnet", "bokeh_lora"),
}
PHASES = tuple(_PHASE_GROUPS)
"""The training phases, one per trainable group set (``set_phase``); the trainer's schedule names only these."""
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


def parameter_group(name: str) -> str | None:
    """Which trainable group a parameter of :class:`MagicBokehModel` belongs to (None: frozen base weight)."""
    if name.startswith("vae.") and ".lora_" in name:
        return "vae_lora"
    if name.startswith("unet.") and ".processor." in name:
        return "bokeh_lora"
    if name.startswith("unet.") and ".lora_" in name:
        return "sr_lora"
    if name.startswith("unet.conv_in."):
        return "conv_in"
    if name.startswith("controlnet."):
        return "controlnet"
    return None


def _check_phase(phase: str) -> None:
    if phase not in _PHASE_GROUPS:
        raise ConfigError(f"unknown training phase '{phase}'; expected one of {', '.join(PHASES)}")


class MagicBokehModel(nn.Module):
    """One-step SR + controllable bokeh. Build with :func:`magicbokeh.models.build_model`.

    ``forward(lq_images, defocus)``: ``B×3×H×W`` images in [0, 1] and ``B×1×H×W`` defocus in [0, 1] (see
    :func:`magicbokeh.optics.defocus_map`; all-zero = pure super-resolution) → ``B×3×H×W`` float32 in
    [0, 1]. H and W must be multiples of :attr:`stride`.
    """

    def __init__(self, vae, unet, controlnet, alphas_cumprod: torch.Tensor, config: dict[str, Any]):
        super().__init__()
        self.vae, self.unet, self.controlnet = vae, unet, controlnet
        self.config = dict(config)
        self.timestep = int(config["timestep"])
        self.fama = FamaSettings.from_config(config["fama"])
        self.scaling_factor = float(vae.config.scaling_factor)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.stride = self.vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        self.register_buffer("alphas_cumprod", alphas_cumprod.clone(), persistent=False)
        # How the weights were trained (degradation, crop size, CoC scale): set by the trainer, saved in config.json
        # beside the build arguments, so evaluation can warn when a benchmark was degraded another way.
        self.training_info: dict[str, Any] = {}
        self.requires_grad_(False)

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def use_focus_mask(self) -> bool:
        """False when FAMA's bokeh branch attends without any mask (``model.fama.mask=none``)."""
        return self.fama.mask != "none"

    @property
    def has_pretrained_base(self) -> bool:
        """True when the frozen base weights come from ``paths.sd21`` (so checkpoints need not store them)."""
        return self.config["sd21_path"] is not None

    # --------------------------------------------------------------------------------------------------- forward
    def check_inputs(self, lq_images: torch.Tensor, defocus: torch.Tensor) -> None:
        """Raise :class:`InvalidInputError` with an actionable message for anything forward cannot take."""
        if lq_images.ndim != 4 or lq_images.shape[1] != 3:
            raise InvalidInputError(f"lq_images must be B×3×H×W, got shape {tuple(lq_images.shape)}")
        if defocus.ndim != 4 or defocus.shape[1] != 1:
            raise InvalidInputError(f"defocus must be B×1×H×W, got shape {tuple(defocus.shape)}")
        if defocus.shape[0] != lq_images.shape[0] or defocus.shape[-2:] != lq_images.shape[-2:]:
            raise InvalidInputError(
                f"defocus {tuple(defocus.shape)} does not match lq_images {tuple(lq_images.shape)} (batch and size)"
            )
        height, width = lq_images.shape[-2:]
        if height % self.stride or width % self.stride:
            raise InvalidInputError(
                f"image size {height}×{width} is not a multiple of the model stride {self.stride}; pad or crop it "
                "(the inference pipeline pads automatically)"
            )
        for name, tensor in (("lq_images", lq_images), ("defocus", defocus)):
            if not torch.isfinite(tensor).all():
                raise InvalidInputError(f"{name} contains NaN or Inf")
            low, high = tensor.aminmax()
            if low < 0 or high > 1:
                raise InvalidInputError(f"{name} must be in [0, 1], got [{low:.4g}, {high:.4g}]; clamp it first")

    def encode(self, lq_images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """LQ images → scaled latents z. The posterior mean unless a generator asks for a sample.

        The release samples the posterior; SD's VAE posterior is so narrow that its mean gives the same images,
        and the mean keeps the forward deterministic without touching the global RNG.
        """
        pixel_values = images_to_pixel_values(lq_images).to(self.dtype)
        posterior = self.vae.encode(pixel_values).latent_dist
        latents = posterior.mode() if generator is None else posterior.sample(generator=generator)
        return latents * self.scaling_factor

    def _timesteps(self, batch: int) -> torch.Tensor:
        return torch.full((batch,), self.timestep, dtype=torch.long, device=self.device)

    def _context(self, latents: torch.Tensor) -> torch.Tensor | None:
        """No prompt: None once cross-attention is dropped, else a zero context (no text encoder is ever loaded)."""
        if self.config["drop_cross_attention"]:
            return None
        return latents.new_zeros(latents.shape[0], 1, self.unet.config.cross_attention_dim)

    def predict_noise(self, latents: torch.Tensor, defocus: torch.Tensor) -> torch.Tensor:
        """ε̂ of the UNet at t = 999 with the defocus ControlNet residuals and the FAMA focus regions."""
        timesteps = self._timesteps(latents.shape[0])
        context = self._context(latents)
        condition = defocus_to_condition(defocus).to(latents.dtype)
        down_residuals, mid_residual = self.controlnet(
            latents, timesteps, encoder_hidden_states=context, controlnet_cond=condition, return_dict=False
        )
        # FAMA's mask from float32 values whatever the caller's dtype: in bf16 a defocus of 0.1002 rounds to
        # bf16(0.1) and a whole out-of-focus plateau would count as in focus.
        focus = self.fama.focus_regions(defocus.float())
        return self.unet(
            latents,
            timesteps,
            encoder_hidden_states=context,
            down_block_additional_residuals=down_residuals,
            mid_block_additional_residual=mid_residual,
            cross_attention_kwargs={FOCUS_KWARG: focus},
            return_dict=False,
        )[0]

    def x0_from_noise(self, latents: torch.Tensor, noise_pred: torch.Tensor) -> torch.Tensor:
        """ẑ₀ = (z − √(1−ᾱ_t)·ε̂)/√ᾱ_t: one DDPM step from t = 999 to the clean latent (z itself has no noise).

        Always float32, whatever the autocast dtype of ``z`` and ``ε̂``: at t = 999, √(1−ᾱ) ≈ 0.998 and 1/√ᾱ ≈ 14.6,
        so the difference cancels most of its operands' magnitude and is then amplified ~15×. In bfloat16 (8-bit
        mantissa) the rounding of 1−ᾱ, of the difference and of the quotient alone cost an RMS error of ~0.06 on
        unit-std latents; in float32 only the inputs' own rounding remains.
        """
        with torch.autocast(device_type=latents.device.type, enabled=False):
            alpha_bar = self.alphas_cumprod[self.timestep].float()
            return (latents.float() - (1 - alpha_bar).sqrt() * noise_pred.float()) / alpha_bar.sqrt()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Clean latents → float32 images in [0, 1] through the frozen decoder.

        ``latents`` (float32 from :meth:`x0_from_noise`) meet the decoder in the weights' dtype (half precision when
        the inference pipeline casts the model); the division by the scaling factor is one well-conditioned
        multiplication, its relative error the dtype's own, so it needs no float32 region."""
        pixel_values = self.vae.decode((latents / self.scaling_factor).to(self.dtype)).sample
        return pixel_values_to_images(pixel_values.float().clamp(-1.0, 1.0))

    def forward(
        self,
        lq_images: torch.Tensor,
        defocus: torch.Tensor,
        generator: torch.Generator | None = None,
        return_latents: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``return_latents=True`` also returns the clean latent ẑ₀ (scaled, as :meth:`encode`), for latent-space
        losses such as the trainer's optional VSD regulariser: ``(images, latents)``."""
        self.check_inputs(lq_images, defocus)
        latents = self.encode(lq_images, generator)
        clean_latents = self.x0_from_noise(latents, self.predict_noise(latents, defocus))
        images = self.decode(clean_latents)
        return (images, clean_latents) if return_latents else images

    # ---------------------------------------------------------------------------------------- training switches
    def phase_parameter_names(self, phase: str) -> list[str]:
        """Names of the parameters a phase trains (see the module docstring)."""
        _check_phase(phase)
        groups = _PHASE_GROUPS[phase]
        return [name for name, _ in self.named_parameters() if parameter_group(name) in groups]

    def trainable_parameters(self, phase: str) -> list[nn.Parameter]:
        """The parameters to hand to this phase's optimizer."""
        names = set(self.phase_parameter_names(phase))
        return [param for name, param in self.named_parameters() if name in names]

    def set_phase(self, phase: str) -> None:
        """``requires_grad`` True exactly for ``phase``'s parameters (everything else frozen)."""
        names = set(self.phase_parameter_names(phase))
        for name, param in self.named_parameters():
            param.requires_grad_(name in names)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute block activations in backward (UNet, ControlNet, VAE) to save memory."""
        for module in (self.unet, self.controlnet, self.vae):
            module.enable_gradient_checkpointing()
        self.config["gradient_checkpointing"] = True

    # ----------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: every trainable group, plus the base weights when they are random (tiny)."""
        state = self.state_dict()
        if not self.has_pretrained_base:
            return state
        return {name: tensor for name, tensor in state.items() if parameter_group(name) is not None}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` (trainable weights) and ``config.json`` (build arguments and
        :attr:`training_info`) atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in self.checkpoint_state_dict().items()}
        with atomic_path(directory / WEIGHTS_NAME) as temp:
            save_file(tensors, str(temp), metadata={"format": "pt", "magicbokeh_format": str(FORMAT_VERSION)})
        document = {"format_version": FORMAT_VERSION, "build": self.config, "training": self.training_info}
        atomic_write_text(directory / CONFIG_NAME, json.dumps(document, indent=2) + "\n")
        return directory

    def load_checkpoint_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint's tensors; every stored group must be complete and nothing unknown may appear."""
        expected = self.checkpoint_state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        reshaped = sorted(n for n in set(expected) & set(tensors) if expected[n].shape != tensors[n].shape)
        if missing or unexpected or reshaped:
            raise ConfigError(
                f"checkpoint does not match this model: {len(missing)} missing (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(reshaped)} of another shape "
                f"(e.g. {reshaped[:3]}); was it saved from another configuration?"
            )
        self.load_state_dict(tensors, strict=False)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, sd21_path: str | None = None) -> MagicBokehModel:
        """Rebuild from ``config.json`` (``sd21_path`` overrides the stored base-weights folder) and load weights."""
        from magicbokeh.models.build import build_model

        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise MissingWeightsError(
                    f"missing checkpoint file '{directory / name}': a MagicBokeh checkpoint folder holds "
                    f"{CONFIG_NAME} and {WEIGHTS_NAME} (written by save_pretrained or the official importer)"
                )
        document = json.loads((directory / CONFIG_NAME).read_text())
        if document.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"unsupported checkpoint format {document.get('format_version')} in {directory}")
        build = dict(document["build"])
        if sd21_path is not None:
            if build["sd21_path"] is None:
                raise ConfigError(f"{directory} holds a randomly initialised (tiny) model; sd21_path does not apply")
            build["sd21_path"] = str(sd21_path)
        model = build_model(**build)
        model.load_checkpoint_weights(load_file(str(directory / WEIGHTS_NAME)))
        model.training_info = dict(document.get("training") or {})
        logger.info("loaded MagicBokeh checkpoint %s", directory)
        return model
