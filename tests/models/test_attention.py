"""FAMA: region attention equals the dense −∞ reference, tokens stay inside their region, no mask ⇒ plain LoRA."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from magicbokeh.errors import InvalidInputError
from magicbokeh.models.attention import (
    FocusAwareAttnProcessor,
    FocusRegions,
    dense_region_attention,
    region_attention,
)

from .conftest import inputs, randomize


def _qkv(batch, heads, tokens, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, dim, generator=generator) for _ in range(3)]


@pytest.mark.parametrize(("height", "width"), [(8, 8), (4, 6), (12, 5), (16, 16)])
def test_efficient_region_attention_matches_dense_reference(height, width):
    tokens = height * width
    q, k, v = _qkv(3, 2, tokens, 8)
    generator = torch.Generator().manual_seed(height * width)
    mask = torch.rand(3, tokens, generator=generator) > 0.6
    mask[1] = True  # a sample entirely in focus (the SR phase)
    mask[2, :] = False
    mask[2, 0] = True  # a single in-focus token
    scale = 8**-0.5
    expected = dense_region_attention(q, k, v, mask, scale)
    torch.testing.assert_close(region_attention(q, k, v, mask, scale), expected, atol=1e-5, rtol=1e-5)


def test_tokens_attend_only_within_their_region():
    q, k, v = _qkv(1, 2, 24, 8)
    mask = torch.zeros(1, 24, dtype=torch.bool)
    mask[0, :10] = True
    scale = 8**-0.5
    before = region_attention(q, k, v, mask, scale)
    # Change keys and values of the out-of-focus tokens only: in-focus outputs must not move at all …
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 10:] += 3.0
    v2[:, :, 10:] -= 5.0
    after = region_attention(q, k2, v2, mask, scale)
    torch.testing.assert_close(after[:, :, :10], before[:, :, :10], atol=0, rtol=0)
    # … while out-of-focus outputs do, and unmasked attention would have mixed the regions.
    assert not torch.allclose(after[:, :, 10:], before[:, :, 10:])
    unmasked_after = region_attention(q, k2, v2, None, scale)
    assert not torch.allclose(unmasked_after[:, :, :10], before[:, :, :10])


def test_focus_regions_grid_follows_the_aspect_ratio():
    in_focus = torch.zeros(1, 1, 32, 48, dtype=torch.bool)
    in_focus[..., :16, :] = True
    regions = FocusRegions(in_focus)
    assert regions.grid(96) == (8, 12) and regions.grid(24) == (4, 6)
    token_mask = regions.token_mask(96).view(8, 12)
    assert token_mask[:4].all() and not token_mask[4:].any()
    with pytest.raises(InvalidInputError):
        regions.grid(100)


def _attention_layer(channels=16, heads=2, seed=0):
    torch.manual_seed(seed)
    return Attention(query_dim=channels, heads=heads, dim_head=channels // heads).eval()


def test_processor_implements_the_fama_formula():
    attn = _attention_layer()
    processor = FocusAwareAttnProcessor(16, rank=4, alpha=2.0)
    randomize(processor.parameters(), std=0.3)
    x = torch.randn(2, 24, 16)
    in_focus = torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(3)) > 0.5
    focus = FocusRegions(in_focus)
    s = 2.0 / 4

    def heads(t):
        return t.view(2, 24, 2, 8).transpose(1, 2)

    def merge(t):
        return t.transpose(1, 2).reshape(2, 24, 16)

    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    h1 = dense_region_attention(heads(q), heads(k), heads(v), None, attn.scale)
    q2, k2, v2 = (
        p + s * lora(x) for p, lora in ((q, processor.to_q_lora), (k, processor.to_k_lora), (v, processor.to_v_lora))
    )
    h2 = dense_region_attention(heads(q2), heads(k2), heads(v2), focus.token_mask(24), attn.scale)
    expected = attn.to_out[0](merge(h1)) + s * processor.to_out_lora(merge(h2))
    with torch.no_grad():
        torch.testing.assert_close(processor(attn, x, focus=focus), expected, atol=1e-5, rtol=1e-5)


def test_all_in_focus_equals_unmasked_branch():
    attn = _attention_layer()
    processor = FocusAwareAttnProcessor(16, rank=4, alpha=1.0)
    randomize(processor.parameters(), std=0.3)
    x = torch.randn(2, 24, 16)
    all_in_focus = FocusRegions(torch.ones(2, 1, 8, 12, dtype=torch.bool))
    with torch.no_grad():
        torch.testing.assert_close(processor(attn, x, focus=all_in_focus), processor(attn, x, focus=None))


def test_zero_initialised_processor_equals_stock_attention():
    attn = _attention_layer()
    processor = FocusAwareAttnProcessor(16, rank=4, alpha=1.0)
    x = torch.randn(2, 24, 16)
    focus = FocusRegions(torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(0)) > 0.5)
    with torch.no_grad():
        torch.testing.assert_close(processor(attn, x, focus=focus), AttnProcessor2_0()(attn, x), atol=1e-6, rtol=1e-5)


def test_model_forward_passes_the_mask_without_kwarg_warnings(make_tiny_model, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("diffusers"), "propagate", True)
    model = make_tiny_model()
    images, defocus = inputs()
    with caplog.at_level(logging.WARNING), torch.no_grad():
        model(images, defocus)
    assert not [r for r in caplog.records if "not expected" in r.getMessage()]
    # The check can fail: a stock processor on a FAMA layer warns about the unknown "focus" argument.
    caplog.clear()
    name = next(n for n in model.unet.attn_processors if n.startswith("up_blocks"))
    processors = dict(model.unet.attn_processors)
    processors[name] = AttnProcessor2_0()
    model.unet.set_attn_processor(processors)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        model(images, defocus)
    assert [r for r in caplog.records if "not expected" in r.getMessage()]
