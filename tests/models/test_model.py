"""The MagicBokeh network: build + surgery, one-step forward, zero-init behaviour, parameter groups, errors."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import AttnProcessor2_0

from magicbokeh.errors import InvalidInputError, MissingWeightsError
from magicbokeh.models import PHASES, MagicBokehModel, build_model
from magicbokeh.models.attention import FocusAwareAttnProcessor

from .conftest import inputs, randomize


def test_tiny_model_builds_with_the_released_surgery(make_tiny_model):
    model = make_tiny_model()
    assert isinstance(model, MagicBokehModel)
    assert model.unet.mid_block is None and model.controlnet.mid_block is None
    blocks = [m for m in [*model.unet.modules(), *model.controlnet.modules()] if isinstance(m, BasicTransformerBlock)]
    assert blocks and all(block.attn2 is None and block.norm2 is None for block in blocks)
    fama = {n for n, p in model.unet.attn_processors.items() if isinstance(p, FocusAwareAttnProcessor)}
    assert fama and fama == {n for n in model.unet.attn_processors if n.startswith("up_blocks")}
    assert model.stride == 4  # VAE ×2 (derived from its config) × UNet ×2


def test_forward_shape_range_and_determinism(make_tiny_model):
    model = make_tiny_model()
    images, defocus = inputs()
    with torch.no_grad():
        first, second = model(images, defocus), model(images, defocus)
    assert first.shape == images.shape and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(first, second, atol=0, rtol=0)


def _stock_forward(model, images):
    """The same UNet with stock processors and no ControlNet: the reference for a zero-initialised model."""
    model.unet.set_attn_processor(AttnProcessor2_0())
    latents = model.encode(images)
    timesteps = torch.full((images.shape[0],), 999)
    noise = model.unet(latents, timesteps, encoder_hidden_states=None).sample
    return model.decode(model.x0_from_noise(latents, noise))


def test_zero_initialised_injector_and_fama_equal_the_stock_unet(make_tiny_model):
    model = make_tiny_model()
    images, defocus = inputs()
    with torch.no_grad():
        ours = model(images, defocus)
        without_defocus = model(images, torch.zeros_like(defocus))
        stock = _stock_forward(model, images)
    torch.testing.assert_close(ours, stock, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours, without_defocus, atol=1e-6, rtol=1e-5)


def test_trained_bokeh_parameters_make_the_defocus_matter(make_tiny_model):
    model = make_tiny_model()
    randomize(model.trainable_parameters("bokeh"), std=0.2)
    images, defocus = inputs()
    with torch.no_grad():
        difference = (model(images, defocus) - model(images, torch.zeros_like(defocus))).abs().max()
    assert difference > 1e-3


def test_focus_mask_switch_changes_only_the_masked_branch(make_tiny_model):
    masked, plain = make_tiny_model(), make_tiny_model(fama={"mask": "none"})
    plain.load_state_dict(masked.state_dict())
    for model in (masked, plain):
        randomize([p for n, p in model.named_parameters() if ".processor." in n], std=0.5)
    images, defocus = inputs()
    with torch.no_grad():
        assert (masked(images, defocus) - plain(images, defocus)).abs().max() > 1e-4
        # With everything in focus the mask is empty, so the two variants agree.
        torch.testing.assert_close(masked(images, defocus * 0), plain(images, defocus * 0), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("images", "defocus"),
    [
        (torch.rand(1, 3, 30, 32), torch.rand(1, 1, 30, 32)),  # not a multiple of the stride
        (torch.rand(1, 3, 32, 32), torch.rand(1, 1, 16, 16)),  # size mismatch
        (torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)),  # not RGB
        (torch.rand(1, 3, 32, 32) * 2, torch.rand(1, 1, 32, 32)),  # out of [0, 1]
        (torch.full((1, 3, 32, 32), float("nan")), torch.rand(1, 1, 32, 32)),
    ],
)
def test_bad_inputs_raise_invalid_input(make_tiny_model, images, defocus):
    with pytest.raises(InvalidInputError):
        make_tiny_model()(images, defocus)


def test_phase_groups_follow_the_alternating_strategy(make_tiny_model):
    model = make_tiny_model()
    names = {phase: set(model.phase_parameter_names(phase)) for phase in PHASES}
    assert names["bokeh"].isdisjoint(names["sr"]) and names["bokeh"].isdisjoint(names["sr_pretrain"])
    assert names["sr"] < names["sr_pretrain"]
    assert names["joint"] == names["sr_pretrain"] | names["bokeh"]
    assert {n for n in names["sr_pretrain"] if n.startswith("vae.")} and all(
        (".lora_" in n and n.startswith("vae.encoder.")) or n.startswith("vae.quant_conv.")
        for n in names["sr_pretrain"]
        if n.startswith("vae.")
    )
    assert {"unet.conv_in.base_layer.weight", "unet.conv_in.base_layer.bias"} <= names["sr_pretrain"] - names["sr"]
    assert all(n.startswith("controlnet.") or ".processor." in n for n in names["bokeh"])
    assert all(".lora_" in n and n.startswith("unet.") and ".processor." not in n for n in names["sr"])
    assert not any("decoder" in n for n in names["joint"])


@pytest.mark.parametrize("phase", ["sr_pretrain", "bokeh", "sr"])
def test_one_training_step_changes_only_the_phase_parameters(make_tiny_model, phase):
    model = make_tiny_model().train()
    model.set_phase(phase)
    trainable = set(model.phase_parameter_names(phase))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    optimizer = torch.optim.AdamW(model.trainable_parameters(phase), lr=1e-2)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    images, defocus = inputs()
    loss = (model(images, defocus) - images.flip(-1)).square().mean()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


def test_gradient_checkpointing_gives_the_same_gradients(make_tiny_model):
    grads = []
    for checkpointing in (False, True):
        model = make_tiny_model(gradient_checkpointing=checkpointing).train()
        model.set_phase("joint")
        images, defocus = inputs(batch=1)
        model(images, defocus).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.trainable_parameters("joint") if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_missing_sd21_folder_names_the_config_key(tmp_path):
    with pytest.raises(MissingWeightsError, match="paths.sd21"):
        build_model(tmp_path / "nowhere")
    (tmp_path / "sd").mkdir()
    with pytest.raises(MissingWeightsError, match="unet"):
        build_model(tmp_path / "sd")


def test_surgery_switches_off_keep_the_stock_unet_working(make_tiny_model):
    model = make_tiny_model(prune_mid_block=False, drop_cross_attention=False)
    assert model.unet.mid_block is not None
    assert any(isinstance(m, BasicTransformerBlock) and m.attn2 is not None for m in model.unet.modules())
    images, defocus = inputs(batch=1)
    with torch.no_grad():
        output = model(images, defocus)
    assert output.shape == images.shape and torch.isfinite(output).all()


def test_reduced_precision_weights_and_autocast_run(make_tiny_model):
    images, defocus = inputs(batch=1)
    model = make_tiny_model()
    with torch.no_grad():
        reference = model(images, defocus)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(images, defocus)
        half = model.to(torch.bfloat16)(images, defocus)
    assert model.dtype == torch.bfloat16
    for output in (autocast, half):
        assert output.dtype == torch.float32 and (output - reference).abs().mean() < 0.05
