"""FAMA: region attention equals the dense −∞ reference, tokens stay inside their region, no mask ⇒ plain LoRA."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from magicbokeh.errors import ConfigError, InvalidInputError
from magicbokeh.models import build_model
from magicbokeh.models.attention import (
    ATTENTION_BACKENDS,
    FocusAwareAttnProcessor,
    FocusRegions,
    dense_region_attention,
    region_attention,
    set_attention_backend,
)

from .conftest import inputs, randomize


def _qkv(batch, heads, tokens, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, dim, generator=generator) for _ in range(3)]


@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
@pytest.mark.parametrize(("height", "width"), [(8, 8), (4, 6), (12, 5), (16, 16)])
def test_every_backend_matches_the_dense_reference(backend, height, width):
    tokens = height * width
    q, k, v = _qkv(3, 2, tokens, 8)
    generator = torch.Generator().manual_seed(height * width)
    mask = torch.rand(3, tokens, generator=generator) > 0.6
    mask[1] = True  # a sample entirely in focus (the SR phase)
    mask[2, :] = False
    mask[2, 0] = True  # a single in-focus token
    scale = 8**-0.5
    expected = dense_region_attention(q, k, v, mask, scale)
    actual = region_attention(q, k, v, mask, scale, backend=backend)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def _disc_mask(side: int, batch: int = 2) -> torch.Tensor:
    """An in-focus disc (a portrait subject) in sample 0, a horizontal band in sample 1: two region layouts."""
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    disc = ((ys - side / 2) ** 2 + (xs - side / 2) ** 2) <= (0.3 * side) ** 2
    band = (ys >= side // 3) & (ys < 2 * side // 3)
    return torch.stack([disc.flatten(), band.flatten()])[:batch]


# Half precision: the SD2.1 head size (64) and a 16×16 grid. The backend's output is compared with the formula in
# float32 on the same rounded inputs, so only the backend's own rounding counts. fp16: the bound, 1e-3. bf16
# has 3 fewer mantissa bits (8× the unit roundoff), so 8e-3. Measured on the CPU (torch 2.14): gather and sdpa_mask
# 3.3e-4 / 3.3e-3, flex's eager path 7.4e-4 / 3.6e-3 (fp16 / bf16); attention that mixes the regions is off by 0.78.
HALF_PRECISION_BOUNDS = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def _half_precision_case(dtype, device="cpu", tokens_side=16, heads=5, batch=2):
    q, k, v = (t.to(device, dtype) for t in _qkv(batch, heads, tokens_side**2, 64, seed=7))
    mask = _disc_mask(tokens_side, batch).to(device)
    reference = dense_region_attention(q.float(), k.float(), v.float(), mask, 64**-0.5)
    return q, k, v, mask, reference


@pytest.mark.parametrize("dtype", list(HALF_PRECISION_BOUNDS))
@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
def test_every_backend_in_half_precision_stays_within_the_bound(backend, dtype):
    q, k, v, mask, reference = _half_precision_case(dtype)
    actual = region_attention(q, k, v, mask, 64**-0.5, backend=backend)
    assert actual.dtype == dtype
    error = (actual.float() - reference).abs().max().item()
    assert error <= HALF_PRECISION_BOUNDS[dtype], f"{backend} {dtype}: max |Δ| {error:.2e}"
    # The bound is tight enough to see a real masking error: attending across regions is far outside it.
    unmasked = region_attention(q, k, v, None, 64**-0.5)
    assert (unmasked.float() - reference).abs().max().item() > 20 * HALF_PRECISION_BOUNDS[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("tokens_side", [64, 32, 16])
@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
def test_every_backend_on_cuda_in_fp16_matches_the_dense_reference(backend, tokens_side):
    # 64² = 4096 tokens: the 512² tile's 64×64 latent (SD2.1: 5 heads × 64); flex runs compiled there.
    q, k, v, mask, reference = _half_precision_case(torch.float16, "cuda", tokens_side)
    actual = region_attention(q, k, v, mask, 64**-0.5, backend=backend)
    error = (actual.float() - reference).abs().max().item()
    assert error <= HALF_PRECISION_BOUNDS[torch.float16], f"{backend}: max |Δ| {error:.2e}"


def _gradients(attention, q, k, v, weights):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    (attention(*leaves) * weights).sum().backward()
    return [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("backend", ["gather", "sdpa_mask"])
def test_backends_that_train_on_the_cpu_give_the_dense_gradients(backend):
    q, k, v = _qkv(2, 2, 48, 8, seed=3)
    weights = _qkv(2, 2, 48, 8, seed=4)[0]
    mask = torch.rand(2, 48, generator=torch.Generator().manual_seed(5)) > 0.5
    expected = _gradients(lambda *t: dense_region_attention(*t, mask, 8**-0.5), q, k, v, weights)
    actual = _gradients(lambda *t: region_attention(*t, mask, 8**-0.5, backend=backend), q, k, v, weights)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_flex_refuses_to_train_on_the_cpu_with_a_clear_error():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 16, 8))
    with pytest.raises(ConfigError, match="fama.backend=gather or sdpa_mask"):
        region_attention(q, k, v, torch.rand(1, 16) > 0.5, 8**-0.5, backend="flex")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
def test_every_backend_on_cuda_gives_the_dense_gradients(backend):
    # float32 (matmuls without TF32, torch's default), 32² tokens, SD2.1's head size: training runs through here.
    q, k, v = (t.cuda() for t in _qkv(2, 5, 1024, 64, seed=3))
    weights = _qkv(2, 5, 1024, 64, seed=4)[0].cuda()
    mask = _disc_mask(32).cuda()
    expected = _gradients(lambda *t: dense_region_attention(*t, mask, 64**-0.5), q, k, v, weights)
    actual = _gradients(lambda *t: region_attention(*t, mask, 64**-0.5, backend=backend), q, k, v, weights)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_backends_share_one_mask_per_grid_within_a_forward():
    q, k, v = _qkv(2, 2, 24, 8)
    focus = FocusRegions(torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(5)) > 0.5)
    mask = focus.token_mask(24)
    for backend in ("sdpa_mask", "flex"):
        region_attention(q, k, v, mask, 8**-0.5, backend=backend, regions=focus)
        cached = dict(focus._derived)
        region_attention(q, k, v, mask, 8**-0.5, backend=backend, regions=focus)
        assert focus._derived.keys() == cached.keys() and all(focus._derived[key] is cached[key] for key in cached)
    assert len(focus._derived) == 2  # one entry per backend for this grid


def test_unknown_backend_is_a_config_error(make_tiny_model):
    q, k, v = _qkv(1, 2, 16, 8)
    with pytest.raises(ConfigError, match="gather, sdpa_mask, flex"):
        region_attention(q, k, v, torch.ones(1, 16, dtype=torch.bool), 1.0, backend="dense")
    with pytest.raises(ConfigError, match="attention backend 'xformers'"):
        FocusAwareAttnProcessor(16, rank=4, backend="xformers")
    with pytest.raises(ConfigError, match="attention backend"):
        set_attention_backend(make_tiny_model(), "xformers")
    with pytest.raises(ConfigError, match="attention backend"):
        build_model(unet_config={}, vae_config={}, fama={"backend": "xformers"})


def test_model_output_is_the_same_with_every_backend(make_tiny_model):
    model = make_tiny_model()
    randomize([p for n, p in model.named_parameters() if ".processor." in n], std=0.5)
    images, defocus = inputs()
    outputs = {}
    with torch.no_grad():
        for backend in ATTENTION_BACKENDS:
            switched = set_attention_backend(model, backend)
            assert switched == sum(isinstance(p, FocusAwareAttnProcessor) for p in model.unet.attn_processors.values())
            assert model.config["fama"]["backend"] == backend == model.fama.backend
            outputs[backend] = model(images, defocus)
    for backend in ATTENTION_BACKENDS[1:]:
        torch.testing.assert_close(outputs[backend], outputs["gather"], atol=1e-5, rtol=0)
    # The masked branch matters here, so equal outputs mean equal masking, not an inert branch.
    with torch.no_grad():
        assert (model(images, torch.zeros_like(defocus)) - outputs["gather"]).abs().max() > 1e-3


def test_build_model_installs_the_configured_backend(make_tiny_model):
    model = make_tiny_model(fama={"backend": "sdpa_mask"})
    processors = [m for m in model.modules() if isinstance(m, FocusAwareAttnProcessor)]
    assert processors and all(p.backend == "sdpa_mask" for p in processors)
    assert model.config["fama"]["backend"] == "sdpa_mask"


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
