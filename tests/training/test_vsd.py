"""Optional latent VSD regulariser (magicbokeh/training/vsd.py): its gradient, its two scores, the trainer wiring,
exact resume and the config switch. Tiny UNets built from dicts, CPU only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from hydra.utils import instantiate

from magicbokeh.errors import ConfigError
from magicbokeh.models.build import SD21_SCHEDULER_CONFIG
from magicbokeh.training.tracking import read_metrics
from magicbokeh.training.train import settings_from_config, vsd_settings_from_config
from magicbokeh.training.trainer import PhaseSettings, Trainer
from magicbokeh.training.vsd import LatentVSD, VSDSettings, build_latent_vsd
from magicbokeh.utils.config import compose_config
from tests.training.test_trainer import _trainer

TINY_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "attention_head_dim": 4,
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
    "use_linear_projection": True,
}


def _scheduler() -> DDPMScheduler:
    return DDPMScheduler.from_config(SD21_SCHEDULER_CONFIG)


def _vsd(seed: int = 0) -> LatentVSD:
    torch.manual_seed(seed)
    real = UNet2DConditionModel.from_config(TINY_UNET)
    context = torch.randn(1, 3, 32)
    return LatentVSD(
        real, context, _scheduler().alphas_cumprod, VSDSettings(), seed=seed, pretrained_base=False,
        optimizer_kwargs={"weight_decay": 0.0},
    )  # fmt: skip


def _perturb_fake_lora(vsd: LatentVSD) -> None:
    """Make the fake score differ from the real one (its LoRA B starts at zero)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in vsd.fake_parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def test_vsd_gradient_is_the_normalised_score_difference():
    vsd = _vsd()
    _perturb_fake_lora(vsd)
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    timesteps = torch.tensor([37, 812])
    noise = torch.randn(2, 4, 8, 8)
    loss, parts = vsd.loss(latents, timesteps, noise)
    (grad,) = torch.autograd.grad(loss, latents)

    # By hand, with diffusers' own forward process and x0 formula: g = (x0_fake − x0_real) / mean|ẑ − x0_real|.
    scheduler = _scheduler()
    noisy = scheduler.add_noise(latents.detach(), noise, timesteps)
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    context = vsd.context.expand(2, -1, -1)
    with torch.no_grad():
        x0 = {
            name: (noisy - (1 - alpha_bar).sqrt() * unet(noisy, timesteps, encoder_hidden_states=context).sample)
            / alpha_bar.sqrt()
            for name, unet in (("real", vsd.real_score), ("fake", vsd.fake_module))
        }
    weight = (latents.detach() - x0["real"]).abs().mean(dim=(1, 2, 3), keepdim=True)
    g = (x0["fake"] - x0["real"]) / weight
    assert g.abs().max() > 1e-3  # the fake score really differs, so the comparison below means something
    # L = mean((ẑ − stopgrad(ẑ − g))²)  ⇒  ∂L/∂ẑ = 2·g / numel (OSEDiff's F.mse_loss, no ½).
    torch.testing.assert_close(grad, 2 * g / g.numel(), rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(loss.detach(), (g**2).mean(), rtol=1e-4, atol=0)
    assert torch.equal(parts["vsd"], loss.detach())


def test_vsd_gradient_is_zero_while_fake_equals_real():
    vsd = _vsd()  # zero-initialised LoRA B: the fake score is exactly the real one
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    loss, _ = vsd.loss(latents)
    (grad,) = torch.autograd.grad(loss, latents)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad) == 0


def test_fake_score_update_trains_only_its_lora():
    vsd = _vsd()
    real_before = {k: v.clone() for k, v in vsd.real_score.state_dict().items()}
    fake_before = {k: v.clone() for k, v in vsd.fake_module.state_dict().items()}
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    losses = [vsd.update_fake_score(latents) for _ in range(3)]
    vsd.loss(latents)[0].backward()
    assert all(torch.equal(v, real_before[k]) for k, v in vsd.real_score.state_dict().items())
    assert all(p.grad is None for p in vsd.real_score.parameters())
    changed = {k for k, v in vsd.fake_module.state_dict().items() if not torch.equal(v, fake_before[k])}
    assert changed and all(".lora_B." in k or ".lora_A." in k for k in changed)
    assert any(".lora_B." in k for k in changed)
    assert latents.grad is not None and all(torch.isfinite(torch.tensor(losses)))


def test_pretrained_base_loads_its_unet_unmodified_with_a_null_prompt_context(tmp_path):
    """A stand-in ``paths.sd21`` folder (tiny random components, diffusers layout): the real score is
    ``<sd21>/unet`` as saved, the context is the text encoder's embedding of "" (zeros without one), and
    checkpoints hold the fake-score LoRA only (the base comes back from the folder)."""
    from omegaconf import OmegaConf
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from magicbokeh.models.build import build_model

    tiny = compose_config("train", ["model=tiny"]).model
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(OmegaConf.to_container(tiny.unet_config))
    unet.save_pretrained(tmp_path / "unet")
    AutoencoderKL.from_config(OmegaConf.to_container(tiny.vae_config)).save_pretrained(tmp_path / "vae")
    _scheduler().save_pretrained(tmp_path / "scheduler")

    def build() -> LatentVSD:
        model = build_model(str(tmp_path), vae_lora_rank=2, unet_lora_rank=2, bokeh_lora_rank=2)
        return build_latent_vsd(model, VSDSettings(), seed=0)

    vsd = build()
    assert all(torch.equal(v, unet.state_dict()[k]) for k, v in vsd.real_score.state_dict().items())
    assert torch.count_nonzero(vsd.context) == 0 and vsd.context.shape == (1, 1, 32)
    assert vsd.checkpoint_tensors() and all(k.startswith("fake.") and ".lora_" in k for k in vsd.checkpoint_tensors())

    text_config = CLIPTextConfig(
        vocab_size=4, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    encoder = CLIPTextModel(text_config)
    encoder.save_pretrained(tmp_path / "text_encoder")
    (tmp_path / "vocab.json").write_text('{"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    vsd = build()
    ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(vsd.context, encoder(ids)[0])
    assert vsd.context.shape == (1, 77, 32)
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert vsd.loss(latents)[0].item() == 0.0 and vsd.update_fake_score(latents) > 0


# ---------------------------------------------------------------------------------------------- in the trainer
VSD_PHASES = {
    "sr_pretrain": PhaseSettings(data="sr", lr=1e-2, l2_weight=0.0, lpips_weight=0.0, vsd_weight=1.0),
    "bokeh": PhaseSettings(data="bokeh", lr=1e-2, l2_weight=0.0, lpips_weight=0.0, vsd_weight=1.0),
    "sr": PhaseSettings(data="sr", lr=1e-2, l2_weight=0.0, lpips_weight=0.0, vsd_weight=1.0),
}


def _tiny_model():
    torch.manual_seed(0)
    return instantiate(compose_config("train", ["model=tiny"]).model)


def _vsd_trainer(run_dir, model, vsd_seed=0, max_steps=6, checkpoint_every=0) -> Trainer:
    """test_trainer._trainer with the real tiny network, only the VSD term in the loss, and no weight decay (so a
    parameter moves only when a gradient reaches it)."""
    no_decay = {"weight_decay": 0.0}
    vsd = build_latent_vsd(model, VSDSettings(lr=1e-2), seed=vsd_seed, optimizer_kwargs=no_decay)
    return _trainer(
        run_dir, max_steps=max_steps, checkpoint_every=checkpoint_every, model=model, size=16, phases=VSD_PHASES,
        optimizer_kwargs=no_decay, vsd=vsd,
    )  # fmt: skip


@pytest.mark.parametrize("phase", ["sr", "bokeh"])
def test_vsd_alone_trains_the_phase_group_through_the_latents(tmp_path, phase):
    model = _tiny_model()
    trainer = _vsd_trainer(tmp_path, model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    parts = trainer.train_step(phase)
    # Step 1: fake == real, so L_VSD has zero gradient and (no weight decay) nothing moves; the fake score does.
    assert parts["vsd"] == 0.0 and parts["vsd_fake_diffusion"] > 0
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    for _ in range(2):
        parts = trainer.train_step(phase)
    assert parts["vsd"] > 0
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    outside = changed - set(model.phase_parameter_names(phase))
    assert changed and not outside, sorted(outside)[:3]


def _losses(run_dir) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["vsd"], r["vsd_fake_diffusion"]) for r in read_metrics(run_dir) if "vsd" in r}


def test_resume_with_vsd_reproduces_the_uninterrupted_run(tmp_path):
    reference = _vsd_trainer(tmp_path / "reference", _tiny_model())
    reference.fit()
    expected = _losses(tmp_path / "reference")

    model = _tiny_model()
    killed = _vsd_trainer(tmp_path / "killed", model, checkpoint_every=3)
    calls, forward = [0], model.forward

    def dying_forward(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 5:  # in the middle of step 5, after the step-3 checkpoint
            raise KeyboardInterrupt("simulated kill")
        return forward(*args, **kwargs)

    model.forward = dying_forward
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    killed.accelerator.end_training()
    latest = killed.checkpoints.latest()
    assert latest.name == "step_000003" and (latest / "vsd.safetensors").is_file()

    # Another VSD seed: the random real score, the fake LoRA and the noise stream must all come from the checkpoint.
    resumed = _vsd_trainer(tmp_path / "resumed", _tiny_model(), vsd_seed=1, checkpoint_every=3)
    resumed.resume(latest)
    resumed.fit()
    got = _losses(tmp_path / "resumed")
    assert sorted(got) == [4, 5, 6]
    assert all(got[step] == expected[step] for step in got), (got, expected)
    assert max(v for v, _ in expected.values()) > 0
    for score in ("real_score", "fake_module"):
        want = getattr(reference.vsd, score).state_dict()
        assert all(torch.equal(v, want[k]) for k, v in getattr(resumed.vsd, score).state_dict().items()), score


def test_train_with_vsd_end_to_end_and_resume(tmp_path):
    """train(cfg) builds, attaches, logs and checkpoints the regulariser; resuming its step-2 checkpoint in another
    run directory reproduces steps 3-4 exactly."""
    from magicbokeh.training.train import train
    from tests.training.test_train_smoke import _toy_overrides

    weights = [f"trainer.phases.{phase}.vsd_weight=1.0" for phase in ("sr_pretrain", "bokeh", "sr")]
    on = ["trainer.keep_last=2", "trainer.vsd.enabled=true", *weights]
    first = train(compose_config("train", ["experiment=smoke", *_toy_overrides(tmp_path, "vsd_a"), *on]))
    checkpoint = Path(first["run_dir"]) / "checkpoints" / "step_000002"
    assert (checkpoint / "vsd.safetensors").is_file()
    resume = [*_toy_overrides(tmp_path, "vsd_b"), *on, f"resume={checkpoint}"]
    second = train(compose_config("train", ["experiment=smoke", *resume]))

    def records(run_dir):
        keys = ("loss", "vsd", "vsd_fake_diffusion")
        return {r["step"]: tuple(r[k] for k in keys) for r in read_metrics(Path(run_dir)) if "vsd" in r}

    expected, got = records(first["run_dir"]), records(second["run_dir"])
    assert sorted(expected) == [1, 2, 3, 4] and sorted(got) == [3, 4]
    assert expected[4][1] > 0 and all(got[step] == expected[step] for step in got), (got, expected)


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("model", ["tiny", "sd21"])
def test_config_switch_composes(model):
    on = ["trainer.vsd.enabled=true", "trainer.phases.sr_pretrain.vsd_weight=1.0", "trainer.phases.sr.vsd_weight=1.0"]
    cfg = compose_config("train", [f"model={model}", *on])
    settings = settings_from_config(cfg.trainer)
    assert settings.phases["sr"].vsd_weight == 1.0 and settings.phases["bokeh"].vsd_weight == 0.0
    vsd = vsd_settings_from_config(cfg.trainer, settings)
    assert vsd == VSDSettings(lora_rank=4, lora_alpha=4.0, lr=5e-5, t_min=20, t_max=980)

    default = compose_config("train", [f"model={model}"])
    assert default.trainer.vsd.enabled is False
    assert vsd_settings_from_config(default.trainer, settings_from_config(default.trainer)) is None
    # A weight without the switch would silently train without the term: an error instead.
    half = compose_config("train", [f"model={model}", "trainer.phases.sr.vsd_weight=1.0"])
    with pytest.raises(ConfigError, match="trainer.vsd.enabled"):
        vsd_settings_from_config(half.trainer, settings_from_config(half.trainer))


def test_paper_experiment_keeps_vsd_off():
    cfg = compose_config("train", ["experiment=paper"])
    assert cfg.trainer.vsd.enabled is False
    assert all(phase.get("vsd_weight", 0.0) == 0.0 for phase in cfg.trainer.phases.values())
