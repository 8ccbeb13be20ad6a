"""Depth model: building by size, the [0, 1] disparity contract, and weight loading in every layout."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from magicbokeh.depth import DepthModel, build_depth_model
from magicbokeh.depth.convert import detect_layout, to_hf_state_dict, to_original_state_dict
from magicbokeh.depth.model import depth_anything_config
from magicbokeh.errors import ConfigError, InvalidInputError, MissingWeightsError


@pytest.fixture(scope="module")
def tiny() -> DepthModel:
    torch.manual_seed(0)
    return build_depth_model("tiny", input_size=None)


def _perturbed_state(model: DepthModel) -> dict[str, torch.Tensor]:
    """A state dict that differs from a fresh init everywhere, so loading it is observable."""
    generator = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=generator) * 0.1 for k, v in model.network.state_dict().items()}


def _legacy_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The key names of the HF hub files (transformers < 5)."""
    renames = {
        ".attention.q_proj.": ".attention.attention.query.",
        ".attention.k_proj.": ".attention.attention.key.",
        ".attention.v_proj.": ".attention.attention.value.",
        ".attention.o_proj.": ".attention.output.dense.",
    }
    out = {}
    for key, value in state.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        out[key] = value
    return out


@pytest.mark.parametrize(("height", "width"), [(50, 75), (14, 14), (9, 31)])
def test_predict_disparity_shape_range_any_size(tiny, height, width):
    disparity = tiny.predict_disparity(torch.rand(2, 3, height, width))
    assert disparity.shape == (2, 1, height, width) and disparity.dtype == torch.float32
    assert disparity.min() >= 0 and disparity.max() <= 1
    # min-max per image: each map reaches both ends unless the prediction is constant
    flat = disparity.flatten(1)
    assert torch.allclose(flat.max(1).values, torch.ones(2)) and torch.allclose(flat.min(1).values, torch.zeros(2))


def test_network_size_keeps_aspect_and_patch_multiple():
    model = DepthModel(build_depth_model("tiny").network, input_size=518)
    height, width = model.network_size(1024, 1562)
    assert height % 14 == 0 and width % 14 == 0 and min(height, width) >= 518
    assert abs(width / height - 1562 / 1024) < 0.03
    assert DepthModel(model.network, input_size=None).network_size(50, 75) == (56, 84)


def test_forward_exposes_features_of_each_out_layer(tiny):
    out = tiny(torch.rand(1, 3, 28, 42))
    assert out.disparity.shape == (1, 1, 28, 42)
    assert len(out.features) == 4 and all(f.shape == (1, 1 + 2 * 3, 32) for f in out.features)


def test_bad_images_raise(tiny):
    with pytest.raises(InvalidInputError):
        tiny.predict_disparity(torch.rand(3, 16, 16))
    bad = torch.rand(1, 3, 16, 16)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidInputError):
        tiny.predict_disparity(bad)


def test_presets_match_depth_anything_v2_sizes():
    large = depth_anything_config("large")
    assert large.backbone_config.hidden_size == 1024 and large.backbone_config.num_hidden_layers == 24
    assert list(large.backbone_config.out_indices) == [5, 12, 18, 24]
    assert list(large.neck_hidden_sizes) == [256, 512, 1024, 1024] and large.fusion_hidden_size == 256
    with pytest.raises(ConfigError, match="unknown depth model size"):
        depth_anything_config("huge")


def test_original_layout_round_trip_is_exact(tiny):
    state = _perturbed_state(tiny)
    original = to_original_state_dict(state)
    assert detect_layout(original) == "original"
    assert any(k.endswith("attn.qkv.weight") for k in original)
    assert "depth_head.scratch.refinenet4.out_conv.weight" in original
    back = to_hf_state_dict(original)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


@pytest.mark.parametrize("layout", ["hf-file", "hf-legacy-file", "hf-folder", "original-pth", "dadepth-ddp-pth"])
def test_weights_load_from_every_layout(tmp_path, tiny, layout):
    state = _perturbed_state(tiny)
    if layout == "hf-file":
        path = tmp_path / "weights.safetensors"
        save_file(state, str(path))
    elif layout == "hf-legacy-file":
        path = tmp_path / "legacy.safetensors"
        save_file(_legacy_hf(state), str(path))
    elif layout == "hf-folder":
        path = tmp_path / "hf"
        path.mkdir()
        save_file(_legacy_hf(state), str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps({"model_type": "depth_anything"}))
    elif layout == "original-pth":
        path = tmp_path / "depth_anything_v2_vits.pth"
        torch.save(to_original_state_dict(state), path)
    else:  # MagicBokeh's DAdepth.pth: DDP keys nested under "model"
        path = tmp_path / "DAdepth.pth"
        torch.save({"model": {f"module.{k}": v for k, v in to_original_state_dict(state).items()}}, path)
    model = build_depth_model("tiny", weights=path, input_size=None)
    loaded = model.network.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_saved_folder_reloads_identically(tmp_path, tiny):
    images = torch.rand(1, 3, 28, 28)
    folder = tiny.save(tmp_path / "student")
    reloaded = build_depth_model("tiny", weights=folder, input_size=None)
    assert torch.equal(reloaded.predict_disparity(images), tiny.predict_disparity(images))


def test_missing_weights_name_the_file_and_key(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"nowhere\.pth.*paths\.depth_anything"):
        build_depth_model("tiny", weights=tmp_path / "nowhere.pth", config_key="paths.depth_anything")


def test_wrong_size_gives_a_clear_mismatch_error(tmp_path, tiny):
    path = tmp_path / "tiny.safetensors"
    save_file(_perturbed_state(tiny), str(path))
    with pytest.raises(ConfigError, match="do not fit the configured network.*small = ViT-S"):
        build_depth_model("small", weights=path)


def test_unrelated_or_corrupt_files_are_rejected(tmp_path):
    unrelated = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2)}, str(unrelated))
    with pytest.raises(ConfigError, match="not a Depth-Anything-V2 state dict"):
        build_depth_model("tiny", weights=unrelated)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read depth weights"):
        build_depth_model("tiny", weights=corrupt)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no model.safetensors"):
        build_depth_model("tiny", weights=empty)


def test_release_position_embeddings_are_resized_by_a_scale_factor():
    """Release preprocessing resizes the N×N position table (here 8×8) to n_rows × n_cols patches with
    ``scale_factor=((n_rows + 0.1)/N, (n_cols + 0.1)/N)`` (the original DINOv2 code), rows along the image height;
    transformers resizes to the size itself, which samples other points unless n = N."""
    torch.manual_seed(0)
    model = build_depth_model("tiny", input_size=None)
    embeddings = model.network.backbone.embeddings
    table = embeddings.position_embeddings.detach().clone()
    grid, width = 8, table.shape[-1]
    n_rows, n_cols = 13, 5
    tokens = torch.zeros(1, 1 + n_rows * n_cols, width)
    patches = table[:, 1:].reshape(1, grid, grid, width).permute(0, 3, 1, 2)

    def expected(**resize):
        resized = F.interpolate(patches, mode="bicubic", align_corners=False, **resize)
        return torch.cat([table[:, :1], resized.permute(0, 2, 3, 1).reshape(1, n_rows * n_cols, width)], dim=1)

    model.set_preprocessing("release")
    release = embeddings.interpolate_pos_encoding(tokens, n_rows * 14, n_cols * 14)
    torch.testing.assert_close(release, expected(scale_factor=((n_rows + 0.1) / grid, (n_cols + 0.1) / grid)))
    model.set_preprocessing("default")
    default = embeddings.interpolate_pos_encoding(tokens, n_rows * 14, n_cols * 14)
    torch.testing.assert_close(default, expected(size=(n_rows, n_cols)))
    assert (release - default).abs().max() > 1e-3
    square = torch.zeros(1, 1 + grid * grid, width)  # the pretrained grid: both use the table as it is
    model.set_preprocessing("release")
    assert embeddings.interpolate_pos_encoding(square, grid * 14, grid * 14) is embeddings.position_embeddings


def test_release_preprocessing_keeps_the_bicubic_overshoot():
    """A hard black/white edge enlarged bicubically overshoots [0, 1]: ours clamps it, the release's does not."""
    torch.manual_seed(0)
    model = build_depth_model("tiny", input_size=112)
    image = torch.zeros(1, 3, 40, 60)
    image[..., :, 30:] = 1.0
    ours = model.prepare(image) * model._std + model._mean  # back to [0, 1] units
    assert ours.min() >= -1e-6 and ours.max() <= 1 + 1e-6
    model.set_preprocessing("release")
    theirs = model.prepare(image) * model._std + model._mean
    assert theirs.shape == ours.shape and theirs.min() < -0.05 and theirs.max() > 1.05
    torch.testing.assert_close(theirs.clamp(0, 1), ours, atol=1e-4, rtol=0)  # the same resize otherwise
    disparity = model.predict_disparity(image)
    assert disparity.shape == (1, 1, 40, 60) and 0 <= disparity.min() and disparity.max() <= 1
    with pytest.raises(ConfigError, match="preprocessing"):
        model.set_preprocessing("official")
