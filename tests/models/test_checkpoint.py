"""Checkpoints: save → load round trip (safetensors + JSON) and the official-format import."""

from __future__ import annotations

import json

import pytest
import torch

from magicbokeh.errors import ConfigError, MissingWeightsError
from magicbokeh.models import MagicBokehModel

from .conftest import inputs, randomize


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
    from safetensors.torch import load_file

    with pytest.raises(ConfigError, match="does not match"):
        other.load_checkpoint_weights(load_file(str(tmp_path / "rank4" / "model.safetensors")))
