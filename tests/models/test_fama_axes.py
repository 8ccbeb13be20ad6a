"""FAMA's ablation axes (``model.fama``): each mask against its dense formula, ``levels:2`` = ``hard``, ``none`` =
unmasked, ``layers`` puts the branch exactly where asked, and configs written before ``fama`` still load."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.models.attention_processor import Attention

from magicbokeh.errors import ConfigError, ParameterError
from magicbokeh.models import MagicBokehModel
from magicbokeh.models.attention import (
    ATTENTION_BACKENDS,
    FamaSettings,
    FocusAwareAttnProcessor,
    FocusRegions,
    dense_region_attention,
    dense_soft_attention,
    region_attention,
    soft_bias,
    soft_region_attention,
)
from magicbokeh.models.model import parameter_group
from magicbokeh.optics.defocus import defocus_bands, in_focus_mask

from .conftest import inputs, randomize


def _qkv(batch, heads, tokens, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, dim, generator=generator) for _ in range(3)]


def _with_bokeh_branch(model, seed=1):
    """Random bokeh-LoRA weights (B starts at zero), so the masked branch changes the output."""
    randomize([p for n, p in model.named_parameters() if parameter_group(n) == "bokeh_lora"], seed=seed, std=0.5)
    return model


# ---------------------------------------------------------------------------------------------------- bands
def test_defocus_bands_split_the_out_of_focus_range_evenly():
    defocus = torch.tensor([0.0, 0.1, 0.11, 0.39, 0.41, 0.69, 0.71, 1.0]).view(1, 1, 1, -1)
    # threshold 0.1, 4 bands: band 0 ≤ 0.1, then (0.1, 0.4], (0.4, 0.7], (0.7, 1.0]
    assert defocus_bands(defocus, 4).flatten().tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert defocus_bands(defocus, 4, threshold=0.0).flatten().tolist() == [0, 1, 1, 2, 2, 3, 3, 3]
    # Two bands are the release's in-focus / out-of-focus split.
    random = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(defocus_bands(random, 2) == 0, in_focus_mask(random))
    assert torch.equal(defocus_bands(random, 2), (~in_focus_mask(random)).long())
    with pytest.raises(ParameterError, match="≥ 2"):
        defocus_bands(random, 1)


@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
def test_every_backend_matches_the_dense_reference_for_n_bands(backend):
    q, k, v = _qkv(3, 2, 48, 8, seed=2)
    bands = torch.randint(0, 4, (3, 48), generator=torch.Generator().manual_seed(3))
    bands[1] = 2  # one band only (all tokens alike)
    bands[2, :] = 3
    bands[2, 5] = 0  # a single-token band, two empty ones
    expected = dense_region_attention(q, k, v, bands, 8**-0.5)
    torch.testing.assert_close(region_attention(q, k, v, bands, 8**-0.5, backend=backend), expected,
                               atol=1e-5, rtol=1e-5)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
def test_every_backend_on_cuda_in_fp16_matches_the_dense_reference_for_n_bands(backend):
    # 32² tokens, SD2.1's head size; flex runs compiled there. fp16 bound as for two regions (test_attention.py).
    q, k, v = (t.to("cuda", torch.float16) for t in _qkv(2, 5, 1024, 64, seed=5))
    defocus = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(6))
    bands = defocus_bands(defocus, 4).flatten(1).cuda()
    reference = dense_region_attention(q.float(), k.float(), v.float(), bands, 64**-0.5)
    actual = region_attention(q, k, v, bands, 64**-0.5, backend=backend)
    assert (actual.float() - reference).abs().max().item() <= 1e-3


def test_tokens_attend_only_within_their_band():
    q, k, v = _qkv(1, 2, 30, 8)
    bands = torch.arange(30).remainder(3)[None]  # three interleaved bands
    before = region_attention(q, k, v, bands, 8**-0.5)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, bands[0] == 2] += 3.0
    v2[:, :, bands[0] == 2] -= 5.0
    after = region_attention(q, k2, v2, bands, 8**-0.5)
    torch.testing.assert_close(after[:, :, bands[0] != 2], before[:, :, bands[0] != 2], atol=0, rtol=0)
    assert not torch.allclose(after[:, :, bands[0] == 2], before[:, :, bands[0] == 2])


# ---------------------------------------------------------------------------------------------------- masks
def _layer_and_processor(seed=0):
    torch.manual_seed(seed)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    processor = FocusAwareAttnProcessor(16, rank=4, alpha=2.0)
    randomize(processor.parameters(), std=0.3)
    return attn, processor


def _formula(attn, processor, x, masked_attention):
    """The FAMA output with h₂ computed by ``masked_attention(q′, k′, v′)`` (the module docstring's formula)."""
    batch, tokens, _ = x.shape
    s = processor.scaling

    def heads(t):
        return t.view(batch, tokens, 2, 8).transpose(1, 2)

    def merge(t):
        return t.transpose(1, 2).reshape(batch, tokens, 16)

    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    h1 = dense_region_attention(heads(q), heads(k), heads(v), None, attn.scale)
    q2, k2, v2 = (p + s * lora(x) for p, lora in zip((q, k, v), (processor.to_q_lora, processor.to_k_lora,
                                                                 processor.to_v_lora)))  # fmt: skip
    h2 = masked_attention(heads(q2), heads(k2), heads(v2))
    return attn.to_out[0](merge(h1)) + s * processor.to_out_lora(merge(h2))


def _defocus(batch=2, height=4, width=6, seed=3):
    return torch.rand(batch, 1, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mask", ["hard", "levels:2", "levels:3", "levels:5"])
def test_partition_masks_implement_the_dense_formula(mask):
    attn, processor = _layer_and_processor()
    x = torch.randn(2, 24, 16, generator=torch.Generator().manual_seed(4))
    settings = FamaSettings(mask=mask, threshold=0.2)
    focus = settings.focus_regions(_defocus())
    num_bands = 2 if mask == "hard" else int(mask.split(":")[1])
    bands = defocus_bands(_defocus(), num_bands, 0.2).flatten(1)  # 4×6 map = the 24-token grid itself
    assert torch.equal(focus.token_bands(24), bands)
    expected = _formula(attn, processor, x, lambda q, k, v: dense_region_attention(q, k, v, bands, attn.scale))
    with torch.no_grad():
        torch.testing.assert_close(processor(attn, x, focus=focus), expected.detach(), atol=1e-5, rtol=1e-5)


def test_soft_mask_implements_its_dense_formula():
    attn, processor = _layer_and_processor()
    x = torch.randn(2, 24, 16, generator=torch.Generator().manual_seed(4))
    defocus = _defocus()
    focus = FamaSettings(mask="soft", tau=0.05).focus_regions(defocus)
    token_defocus = defocus.flatten(1)
    assert focus.soft and torch.equal(focus.token_defocus(24), token_defocus)
    expected = _formula(
        attn, processor, x, lambda q, k, v: dense_soft_attention(q, k, v, token_defocus, 0.05, attn.scale)
    )
    with torch.no_grad():
        torch.testing.assert_close(processor(attn, x, focus=focus), expected.detach(), atol=1e-5, rtol=1e-5)
    # The bias is −|δᵢ − δⱼ|/τ: zero between equal defocus, symmetric, −10 for a difference of 0.5 at τ = 0.05.
    bias = soft_bias(torch.tensor([[0.2, 0.2, 0.7]]), 0.05, torch.float32)[0, 0]
    torch.testing.assert_close(bias, torch.tensor([[0.0, 0.0, -10.0], [0.0, 0.0, -10.0], [-10.0, -10.0, 0.0]]))


def test_soft_mask_fades_to_unmasked_attention_as_tau_grows():
    q, k, v = _qkv(2, 2, 24, 8)
    token_defocus = _defocus().flatten(1)
    unmasked = region_attention(q, k, v, None, 8**-0.5)
    wide = soft_region_attention(q, k, v, token_defocus, 1e6, 8**-0.5)
    narrow = soft_region_attention(q, k, v, token_defocus, 0.01, 8**-0.5)
    torch.testing.assert_close(wide, unmasked, atol=1e-5, rtol=1e-5)
    assert (narrow - unmasked).abs().max() > 0.1


def test_none_mask_is_unmasked_attention():
    attn, processor = _layer_and_processor()
    x = torch.randn(2, 24, 16, generator=torch.Generator().manual_seed(4))
    assert FamaSettings(mask="none").focus_regions(_defocus()) is None
    expected = _formula(attn, processor, x, lambda q, k, v: dense_region_attention(q, k, v, None, attn.scale))
    with torch.no_grad():
        torch.testing.assert_close(processor(attn, x, focus=None), expected.detach(), atol=1e-5, rtol=1e-5)


def test_levels_2_is_hard_exactly_in_the_model(make_tiny_model):
    images, defocus = inputs()
    outputs = {}
    for mask in ("hard", "levels:2", "levels:4", "none", "soft"):
        model = _with_bokeh_branch(make_tiny_model(fama={"mask": mask}))
        with torch.no_grad():
            outputs[mask] = model(images, defocus)
    assert torch.equal(outputs["levels:2"], outputs["hard"])
    for other in ("levels:4", "none", "soft"):  # and every other mask really changes what the branch sees
        assert (outputs[other] - outputs["hard"]).abs().max() > 1e-4, other


# ---------------------------------------------------------------------------------------------------- layers
def _self_attention_names(model, prefix: str) -> set[str]:
    return {
        f"{name}.processor"
        for name, module in model.unet.named_modules()
        if isinstance(module, Attention) and name.endswith("attn1") and name.startswith(prefix)
    }


@pytest.mark.parametrize(("layers", "prefixes"), [("up", ("up_blocks",)), ("down", ("down_blocks",)),
                                                   ("all", ("down_blocks", "mid_block", "up_blocks"))])  # fmt: skip
def test_layers_install_the_branch_exactly_where_asked(make_tiny_model, monkeypatch, layers, prefixes):
    # An unpruned mid block has a self-attention too: "all" must take it, "up" and "down" must not.
    model = _with_bokeh_branch(make_tiny_model(fama={"layers": layers}, prune_mid_block=False))
    fama = {name for name, p in model.unet.attn_processors.items() if isinstance(p, FocusAwareAttnProcessor)}
    expected = set().union(*(_self_attention_names(model, prefix) for prefix in prefixes))
    assert expected and fama == expected
    assert all(_self_attention_names(model, prefix) for prefix in ("down_blocks", "mid_block", "up_blocks"))
    # The bokeh-LoRA group holds the parameters of exactly those processors.
    owners = {n.split(".processor.")[0].removeprefix("unet.") + ".processor"
              for n in model.phase_parameter_names("bokeh") if parameter_group(n) == "bokeh_lora"}  # fmt: skip
    assert owners == expected
    # Every FAMA processor receives the forward's regions (down blocks get the attention kwargs too).
    seen = []
    original = FocusAwareAttnProcessor._masked_branch

    def spy(self, query, key, value, focus, scale):
        seen.append((self, focus))
        return original(self, query, key, value, focus, scale)

    monkeypatch.setattr(FocusAwareAttnProcessor, "_masked_branch", spy)
    images, defocus = inputs()
    with torch.no_grad():
        model(images, defocus)
    processors = {id(p) for p in model.unet.attn_processors.values() if isinstance(p, FocusAwareAttnProcessor)}
    assert {id(processor) for processor, _ in seen} == processors
    assert all(isinstance(focus, FocusRegions) for _, focus in seen)


def test_the_branch_masks_in_the_down_blocks_too(make_tiny_model):
    images, defocus = inputs()
    outputs = {}
    for mask in ("hard", "none"):
        model = _with_bokeh_branch(make_tiny_model(fama={"layers": "down", "mask": mask}))
        with torch.no_grad():
            outputs[mask] = model(images, defocus)
    assert (outputs["hard"] - outputs["none"]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------------- config
def test_settings_reject_unknown_values():
    for bad in ({"mask": "levels:1"}, {"mask": "levels:x"}, {"mask": "dense"}, {"layers": "mid"}, {"tau": 0.0},
                {"threshold": 1.0}, {"rank": 0}, {"backend": "xformers"}):  # fmt: skip
        with pytest.raises(ConfigError):
            FamaSettings(**bad)
    with pytest.raises(ConfigError, match="unknown model.fama key"):
        FamaSettings.from_config({"masks": "hard"})


def test_configs_written_before_fama_still_load(make_tiny_model, tmp_path):
    """A config.json with the flat keys (bokeh_lora_rank, bokeh_lora_alpha, use_focus_mask, attention_backend), as
    our checkpoints and the official importer wrote them, rebuilds the same network and loads its weights."""
    for use_focus_mask, mask in ((True, "hard"), (False, "none")):
        model = _with_bokeh_branch(make_tiny_model(fama={"rank": 2, "alpha": 3.0, "mask": mask}))
        folder = model.save_pretrained(tmp_path / mask)
        document = json.loads((folder / "config.json").read_text())
        build = document["build"]
        fama = build.pop("fama")
        build.update(bokeh_lora_rank=2, bokeh_lora_alpha=3.0, use_focus_mask=use_focus_mask,
                     attention_backend="sdpa_mask")  # fmt: skip
        (folder / "config.json").write_text(json.dumps(document))
        loaded = MagicBokehModel.from_pretrained(folder).eval()
        assert loaded.config["fama"] == {**fama, "backend": "sdpa_mask"}
        assert "bokeh_lora_rank" not in loaded.config and loaded.use_focus_mask is use_focus_mask
        images, defocus = inputs()
        with torch.no_grad():
            torch.testing.assert_close(loaded(images, defocus), model(images, defocus), atol=1e-5, rtol=0)
