"""Optional latent VSD regulariser: OSEDiff's ``distribution_matching_loss`` (REFERENCE §5.1), off by default.

NOT confirmed for the MagicBokeh paper: no source says whether MagicBokeh kept OSEDiff's VSD (REFERENCE §1.6).
Switch it on with ``trainer.vsd.enabled=true`` and a per-phase ``vsd_weight > 0`` (configs/trainer/default.yaml).

Two diffusion "scores" judge the generator's clean latent ẑ (scaled latents, as ``model.encode`` returns them):

* **real score**: a frozen copy of the *pretrained base* UNet (stock diffusers, no LoRA, no surgery): the prior.
* **fake score**: another copy of that UNet with a LoRA, trained alongside with the ε-prediction diffusion loss on
  the detached generator latents, so it tracks the distribution the generator currently produces.

Per generator step (Wang et al. 2023 VSD; Yin et al. 2024 DMD, Eq. 7; OSEDiff, Wu et al. 2024, Eq. 5)::

    t ~ U[t_min, t_max),  ε ~ N(0, I),  z_t = √ᾱ_t·ẑ + √(1−ᾱ_t)·ε
    x0_s = (z_t − √(1−ᾱ_t)·ε_s(z_t, t)) / √ᾱ_t                 for s ∈ {real, fake}, no gradient
    g    = (x0_fake − x0_real) / mean|ẑ − x0_real|              (per-sample mean over C×H×W)
    L    = MSE(ẑ, stopgrad(ẑ − g))                              ∂L/∂ẑ = 2·g / numel(ẑ)

so gradient descent on ẑ moves it along x0_real − x0_fake: towards what the prior finds likely, away from what the
generator already produces. The loss value itself is mean(g²) and carries no meaning beyond its gradient.

Prompts. OSEDiff conditions both scores on RAM tags of the HQ image and applies CFG 7.5 (with a long negative
prompt) to the real score. MagicBokeh is prompt-free, so both scores here see one fixed *null* context: SD's
embedding of the empty prompt "" when ``<sd21>/text_encoder`` and ``<sd21>/tokenizer`` exist, else zeros. With a
single context there is no positive/negative pair, so classifier-free guidance cannot be done honestly and is not
offered: the real score is SD's unconditional score (guidance scale 1).

Randomness. ``t`` and ``ε`` come from a ``torch.Generator`` owned by :class:`LatentVSD`, seeded from the run seed;
its state is saved in training checkpoints so a resumed run draws the same values (DESIGN §3: no global RNG).

Cost. Per VSD step: two no-grad UNet passes (real, fake) for L_VSD and one forward/backward of the fake score;
memory: two more base UNets (SD2.1: 2 × 0.87 G parameters, float32 unless autocast) plus the LoRA's AdamW state.
Under DDP the fake score is wrapped like the model (its LoRA gradients are averaged across ranks).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model

from magicbokeh.errors import ConfigError
from magicbokeh.training.optim import build_optimizer, guarded_update
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.seeding import derive_seed

logger = get_logger(__name__)

# OSEDiff's regulariser LoRA targets (module-name suffixes; peft matches `name == t or name.endswith("." + t)`).
FAKE_SCORE_LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
)  # fmt: skip
FAKE_SCORE_ADAPTER = "vsd_fake"


@dataclass(frozen=True)
class VSDSettings:
    """``trainer.vsd`` without ``enabled``: the fake-score LoRA, its learning rate and the timestep range."""

    lora_rank: int = 4
    lora_alpha: float = 4.0
    lr: float = 5.0e-5
    t_min: int = 20
    t_max: int = 980
    eps: float = 1.0e-6  # guards the mean|ẑ − x0_real| normaliser (OSEDiff divides unguarded)

    def __post_init__(self) -> None:
        if self.lora_rank < 1:
            raise ConfigError(f"trainer.vsd.lora_rank must be ≥ 1, got {self.lora_rank}")
        if not 0 <= self.t_min < self.t_max:
            raise ConfigError(f"trainer.vsd needs 0 ≤ t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")


class LatentVSD:
    """Real (frozen) and fake (LoRA, trained) score UNets, and the two things the trainer calls on them.

    * :meth:`loss` (``ẑ`` → ``(L_VSD, parts)``): add ``λ·L_VSD`` to the generator's loss; gradient reaches the
      generator through ``ẑ`` only.
    * :meth:`update_fake_score` (``ẑ`` → float): one diffusion-loss step of the fake-score LoRA on ``ẑ.detach()``,
      after the generator's optimizer step.

    Build with :func:`build_latent_vsd`. Without :meth:`attach` everything runs eagerly on the caller's device
    (tests); :meth:`attach` moves the UNets to the accelerator's device and wraps the fake score for DDP.
    """

    def __init__(
        self,
        real_score: torch.nn.Module,
        context: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        settings: VSDSettings,
        *,
        seed: int,
        pretrained_base: bool,
        optimizer_kwargs: Mapping[str, Any] | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        if settings.t_max > alphas_cumprod.numel():
            raise ConfigError(f"trainer.vsd.t_max={settings.t_max} exceeds the {alphas_cumprod.numel()} timesteps")
        self.settings = settings
        self.pretrained_base = bool(pretrained_base)
        self.max_grad_norm = max_grad_norm
        self.real_score = real_score.eval().requires_grad_(False)
        fake = copy.deepcopy(real_score)
        # peft draws lora_A from the global RNG: seed it locally so the init depends on the run seed only and the
        # global stream the rest of training uses is left where it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "vsd_fake_lora"))
            # Gaussian A, zero B: the fake score starts equal to the real one (so L_VSD starts at exactly zero).
            lora = LoraConfig(
                r=settings.lora_rank,
                lora_alpha=settings.lora_alpha,
                target_modules=list(FAKE_SCORE_LORA_TARGETS),
                init_lora_weights="gaussian",
            )
            inject_adapter_in_model(lora, fake, adapter_name=FAKE_SCORE_ADAPTER)
        for name, param in fake.named_parameters():
            param.requires_grad_(".lora_" in name)
        self.fake_module = fake.train()  # the unwrapped fake score (state dicts, no-grad evaluation)
        self.fake_score: torch.nn.Module = fake  # what training calls: the DDP wrapper after attach()
        self.context = context.detach().float()
        self.alphas_cumprod = alphas_cumprod.detach().float()
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "vsd_noise"))
        self.rank, self.world_size = 0, 1  # see sample_timesteps_and_noise
        self.optimizer = build_optimizer(self.fake_parameters(), lr=settings.lr, **dict(optimizer_kwargs or {}))
        self.accelerator = None  # set by attach()
        self._backward: Callable[[torch.Tensor], None] = torch.Tensor.backward
        self._autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    # ------------------------------------------------------------------------------------------------- set-up
    def fake_parameters(self) -> list[torch.nn.Parameter]:
        """The fake-score LoRA parameters (the only ones its optimizer updates)."""
        return [param for name, param in self.fake_module.named_parameters() if ".lora_" in name]

    def to(self, device: torch.device | str) -> LatentVSD:
        self.real_score.to(device)
        self.fake_module.to(device)
        self.context = self.context.to(device)
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self

    def attach(self, accelerator) -> LatentVSD:
        """Run under ``accelerator``: its device, autocast, backward (loss scaling) and DDP for the fake score."""
        self.to(accelerator.device)
        self.fake_score, self.optimizer = accelerator.prepare(self.fake_module, self.optimizer)
        self.rank, self.world_size = accelerator.process_index, accelerator.num_processes
        self.accelerator = accelerator
        self._backward = accelerator.backward
        self._autocast = accelerator.autocast
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The noise generator's state, as a training-checkpoint state (the LoRA goes to ``vsd.safetensors``)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    # ----------------------------------------------------------------------------------------------- the maths
    def sample_timesteps_and_noise(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``t ~ U[t_min, t_max)`` per sample and ``ε ~ N(0, I)`` from the class's own generator, moved to the
        latents' device. Drawn on the CPU (the same stream on any device) for the whole global batch, of which this
        rank keeps its slice: ranks get different draws while their generators stay identical, so the main
        process's generator state in a checkpoint is every rank's."""
        batch = latents.shape[0]
        shape = (self.world_size * batch, *latents.shape[1:])
        timesteps = torch.randint(self.settings.t_min, self.settings.t_max, shape[:1], generator=self.generator)
        noise = torch.randn(shape, generator=self.generator, dtype=torch.float32)
        mine = slice(self.rank * batch, (self.rank + 1) * batch)
        return timesteps[mine].to(latents.device), noise[mine].to(latents.device)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε (DDPM forward process, SD's scaled-linear ᾱ)."""
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return alpha_bar.sqrt() * latents.float() + (1 - alpha_bar).sqrt() * noise.float()

    def x0_estimate(self, unet: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x0 = (z_t − √(1−ᾱ_t)·ε̂(z_t, t)) / √ᾱ_t with the null context (float32)."""
        context = self.context.expand(noisy.shape[0], -1, -1)
        with self._autocast():
            noise_pred = unet(noisy, timesteps, encoder_hidden_states=context, return_dict=False)[0]
        alpha_bar = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return (noisy - (1 - alpha_bar).sqrt() * noise_pred.float()) / alpha_bar.sqrt()

    def loss(
        self, latents: torch.Tensor, timesteps: torch.Tensor | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_VSD of the generator latents ``ẑ`` (``B×4×h×w``, scaled); ``timesteps``/``noise`` fix the draw (tests).

        Returns the loss (differentiable w.r.t. ``latents`` only) and ``{"vsd": loss}`` for logging.
        """
        if timesteps is None or noise is None:
            timesteps, noise = self.sample_timesteps_and_noise(latents)
        with torch.no_grad():
            noisy = self.add_noise(latents.detach(), noise, timesteps)
            x0_real = self.x0_estimate(self.real_score, noisy, timesteps)
            x0_fake = self.x0_estimate(self.fake_module, noisy, timesteps)
        loss = vsd_loss(latents, x0_real, x0_fake, self.settings.eps)  # graph through `latents` only
        return loss, {"vsd": loss.detach()}

    def update_fake_score(self, latents: torch.Tensor) -> float:
        """One AdamW step of the fake-score LoRA on ε-prediction MSE at ``t ~ U[t_min, t_max)`` (OSEDiff's
        regulariser update, λ = 1) on ``latents.detach()``; returns the diffusion loss."""
        latents = latents.detach()
        timesteps, noise = self.sample_timesteps_and_noise(latents)
        noisy = self.add_noise(latents, noise, timesteps)
        context = self.context.expand(noisy.shape[0], -1, -1)
        with self._autocast():
            noise_pred = self.fake_score(noisy, timesteps, encoder_hidden_states=context, return_dict=False)[0]
        loss = F.mse_loss(noise_pred.float(), noise)
        self._backward(loss)
        # The trainer's guarded update: this optimizer alone is unscaled under fp16, a non-finite step is skipped.
        update = guarded_update(self.optimizer, self.fake_parameters(), loss, self.max_grad_norm, self.accelerator)
        if not update.applied:
            logger.warning("VSD fake score: non-finite loss or gradient, update skipped")
        return update.loss

    # ---------------------------------------------------------------------------------------------- checkpoints
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """``fake.<LoRA tensors>``; for a random base (tiny model) also ``real.<every tensor>``, which no file
        restores (the fake score's base weights are the real score's, so they come back from those)."""
        tensors = {f"fake.{k}": v for k, v in self.fake_module.state_dict().items() if ".lora_" in k}
        if not self.pretrained_base:
            tensors.update({f"real.{k}": v for k, v in self.real_score.state_dict().items()})
        return tensors

    def load_checkpoint_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        expected = self.checkpoint_tensors()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ConfigError(
                f"VSD checkpoint does not match trainer.vsd: {len(missing)} missing (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); was lora_rank or the model changed?"
            )
        real = {k.removeprefix("real."): v for k, v in tensors.items() if k.startswith("real.")}
        if real:
            self.real_score.load_state_dict(real)
            # The fake score's base weights are the real score's; peft renames a wrapped layer's own weights
            # `<layer>.base_layer.weight`.
            base = {k: real[k.replace(".base_layer", "")] for k in self.fake_module.state_dict() if ".lora_" not in k}
            self.fake_module.load_state_dict(base, strict=False)
        fake = {k.removeprefix("fake."): v for k, v in tensors.items() if k.startswith("fake.")}
        self.fake_module.load_state_dict(fake, strict=False)


def vsd_loss(latents: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``MSE(ẑ, stopgrad(ẑ − g))``, ``g = (x0_fake − x0_real) / mean|ẑ − x0_real|``: OSEDiff's
    ``distribution_matching_loss`` (osediff.py, ``loss = F.mse_loss(latents, (latents - grad).detach())``; DMD Eq. 7).
    No ½ in front, so ``vsd_weight = 1`` is OSEDiff's λ_vsd = 1; ∂L/∂ẑ = 2g / numel(ẑ)."""
    latents = latents.float()
    weight = (latents.detach() - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(eps)
    grad = (x0_fake - x0_real) / weight
    return F.mse_loss(latents, (latents - grad).detach())


# ----------------------------------------------------------------------------------------------------- building
def _null_prompt_context(sd21_root: Path, cross_attention_dim: int) -> torch.Tensor:
    """SD's embedding of the empty prompt (``1×77×D``) if the folder has a text encoder, else zeros (``1×1×D``)."""
    if (sd21_root / "text_encoder").is_dir() and (sd21_root / "tokenizer").is_dir():
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(sd21_root, subfolder="tokenizer", local_files_only=True)
        encoder = CLIPTextModel.from_pretrained(sd21_root, subfolder="text_encoder", local_files_only=True)
        length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)  # 77 for SD2.1
        ids = tokenizer([""], padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            context = encoder(ids)[0].float()  # last hidden state, as diffusers' SD pipeline (no clip skip)
        del encoder  # only the embedding is kept
        return context
    logger.warning(
        "VSD: %s has no text_encoder/ + tokenizer/: the scores get a zero context instead of SD's empty-prompt "
        "embedding (a context SD was never trained on)",
        sd21_root,
    )
    return torch.zeros(1, 1, cross_attention_dim)


def build_latent_vsd(
    model,
    settings: VSDSettings,
    *,
    seed: int,
    optimizer_kwargs: Mapping[str, Any] | None = None,
    max_grad_norm: float | None = None,
) -> LatentVSD:
    """The VSD regulariser for a :class:`~magicbokeh.models.MagicBokehModel` (unwrapped).

    A model built from ``paths.sd21`` gets ``<sd21>/unet`` loaded unmodified as the real score. The tiny random
    model gets a UNet built from its ``unet_config`` with RANDOM weights (seeded from ``seed``): a random "prior"
    regularises towards nothing meaningful; it only exercises the code path (tests, CPU smoke runs).
    """
    from diffusers import UNet2DConditionModel

    config = model.config
    if config["sd21_path"] is not None:
        root = Path(config["sd21_path"]).expanduser()
        real = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True)
        context = _null_prompt_context(root, real.config.cross_attention_dim)
        pretrained = True
    else:
        logger.warning(
            "VSD on a randomly initialised model: the real score is a RANDOM UNet, so L_VSD regularises towards "
            "nothing meaningful (code-path check only)"
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "vsd_real_score"))
            real = UNet2DConditionModel.from_config(config["unet_config"])
        context = torch.zeros(1, 1, real.config.cross_attention_dim)
        pretrained = False
    vsd = LatentVSD(
        real,
        context,
        model.alphas_cumprod,
        settings,
        seed=seed,
        pretrained_base=pretrained,
        optimizer_kwargs=optimizer_kwargs,
        max_grad_norm=max_grad_norm,
    )
    if config.get("gradient_checkpointing"):
        vsd.fake_module.enable_gradient_checkpointing()
    n_lora = sum(p.numel() for p in vsd.fake_parameters())
    logger.info("VSD: real + fake score UNets built (fake-score LoRA: %.2f M parameters)", n_lora / 1e6)
    return vsd
