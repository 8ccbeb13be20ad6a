"""Checkpoints: save → load round trip (safetensors + JSON) and the official-format import."""

from __future__ import annotations

import copy
import json
import os
import sys

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from omegaconf import OmegaConf
from safetensors.torch import load_file

from magicbokeh.errors import ConfigError, MissingWeightsError
from magicbokeh.models import MagicBokehModel, build_model
from magicbokeh.models.build import SD21_SCHEDULER_CONFIG
from magicbokeh.models.checkpoint import import_official_checkpoint, read_official_checkpoint

from .conftest import inputs, randomize
from .official_format import write_official_checkpoint


def test_save_load_round_trip_gives_identical_outputs(make_tiny_model, tmp_path):
    model = make_tiny_model(seed=3)
    randomize(model.trainable_parameters("joint"), std=0.1)
    model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["build"]["name"] == "tiny"
    loaded = MagicBokehModel.from_pretrained(tmp_path / "ckpt").eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    images, defocus = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, defocus), model(images, defocus), atol=0, rtol=0)


def test_loading_rejects_missing_files_and_other_configurations(make_tiny_model, tmp_path):
    with pytest.raises(MissingWeightsError, match="config.json"):
        MagicBokehModel.from_pretrained(tmp_path)
    make_tiny_model().save_pretrained(tmp_path / "rank4")
    other = make_tiny_model(bokeh_lora_rank=2)
    with pytest.raises(ConfigError, match="does not match"):
        other.load_checkpoint_weights(load_file(str(tmp_path / "rank4" / "model.safetensors")))


class _Exploit:
    """Unpickling this would call os.getcwd: the restricted unpickler must refuse the global instead."""

    def __reduce__(self):
        return (os.getcwd, ())


def _official_tiny(make_tiny_model):
    return make_tiny_model(unet_lora_alpha=8.0, vae_lora_alpha=8.0, bokeh_lora_alpha=1.0)


@pytest.mark.slow  # ~2 s idle, ~9 s on the shared CI cores: builds, pickles and runs three tiny models
def test_official_checkpoint_import_reproduces_the_model(make_tiny_model, tmp_path, monkeypatch):
    original = _official_tiny(make_tiny_model)
    randomize(original.trainable_parameters("joint"), std=0.1)
    write_official_checkpoint(original, tmp_path / "lora.pkl", monkeypatch)
    monkeypatch.delitem(sys.modules, "models.controlnet")  # the importer must not need the release's code

    target = copy.deepcopy(original)
    with torch.no_grad():
        for param in target.trainable_parameters("joint"):
            param.zero_()
    imported = import_official_checkpoint(tmp_path / "lora.pkl", model=target, output_dir=tmp_path / "ours")
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, imported.state_dict()[name]), name
    images, defocus = inputs()
    reloaded = MagicBokehModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        expected = original(images, defocus)
        torch.testing.assert_close(imported(images, defocus), expected, atol=0, rtol=0)
        torch.testing.assert_close(reloaded(images, defocus), expected, atol=0, rtol=0)


def test_official_import_checks_ranks(make_tiny_model, tmp_path, monkeypatch):
    write_official_checkpoint(_official_tiny(make_tiny_model), tmp_path / "lora.pkl", monkeypatch)
    with pytest.raises(ConfigError, match=r"fama\.rank"):
        import_official_checkpoint(tmp_path / "lora.pkl", model=make_tiny_model(bokeh_lora_rank=2))


def test_restricted_unpickler_refuses_unexpected_globals(tmp_path):
    torch.save({"rank_unet": 4, "payload": _Exploit()}, tmp_path / "evil.pkl")
    with pytest.raises(ConfigError, match="getcwd"):
        read_official_checkpoint(tmp_path / "evil.pkl")
    with pytest.raises(MissingWeightsError, match="lora.pkl"):
        read_official_checkpoint(tmp_path / "missing.pkl")


@pytest.fixture
def tiny_sd21_folder(tiny_model_config, tmp_path):
    """A tiny base model written in the diffusers folder layout of paths.sd21."""
    torch.manual_seed(0)
    config = OmegaConf.to_container(tiny_model_config)
    UNet2DConditionModel.from_config(config["unet_config"]).save_pretrained(tmp_path / "sd" / "unet")
    AutoencoderKL.from_config(config["vae_config"]).save_pretrained(tmp_path / "sd" / "vae")
    DDPMScheduler.from_config(SD21_SCHEDULER_CONFIG).save_pretrained(tmp_path / "sd" / "scheduler")
    return tmp_path / "sd"


def test_pretrained_base_checkpoints_store_only_trainable_weights(tiny_sd21_folder, tmp_path):
    model = build_model(tiny_sd21_folder, unet_lora_rank=2, vae_lora_rank=2, bokeh_lora_rank=2).eval()
    randomize(model.trainable_parameters("joint"), std=0.1)
    model.save_pretrained(tmp_path / "ckpt")
    assert set(load_file(str(tmp_path / "ckpt" / "model.safetensors"))) == set(model.phase_parameter_names("joint"))
    loaded = MagicBokehModel.from_pretrained(tmp_path / "ckpt", sd21_path=tiny_sd21_folder).eval()
    images, defocus = inputs(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, defocus), model(images, defocus), atol=0, rtol=0)


def test_official_import_builds_on_the_sd21_folder(tiny_sd21_folder, tmp_path, monkeypatch):
    original = build_model(tiny_sd21_folder, bokeh_lora_rank=3).eval()  # release alphas: 8 (UNet, VAE), 1 (bokeh)
    randomize(original.trainable_parameters("joint"), std=0.1)
    write_official_checkpoint(original, tmp_path / "lora.pkl", monkeypatch)
    imported = import_official_checkpoint(tmp_path / "lora.pkl", sd21_path=tiny_sd21_folder).eval()
    assert imported.config["fama"]["rank"] == 3
    images, defocus = inputs(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(imported(images, defocus), original(images, defocus), atol=0, rtol=0)
