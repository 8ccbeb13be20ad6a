"""Focus-aware masked attention (FAMA, DESIGN §1) as a diffusers attention processor.

In every self-attention (``attn1``) of the UNet up blocks the released model adds a "bokeh LoRA" branch:

    h₁ = softmax(Q Kᵀ/√d) V                                (ordinary attention, base + SR-LoRA projections)
    Q′ = Q + s·B_q A_q x,  K′ = K + s·B_k A_k x,  V′ = V + s·B_v A_v x
    h₂ = softmax(Q′ K′ᵀ/√d + M) V′,   M_ij = 0 if tokens i, j are in the same region, −∞ otherwise
    out = to_out(h₁) + s·B_o A_o h₂,  s = α / r

The regions are "in focus" (defocus ≤ 0.1) and "out of focus". Three interchangeable backends compute h₂
(:data:`ATTENTION_BACKENDS`; ``build_model(attention_backend=...)``, :func:`set_attention_backend`):

* ``gather`` (default): because M only separates two sets, h₂ is ordinary attention inside each set. Each sample's
  tokens are gathered by region and ``scaled_dot_product_attention`` runs on each set, so no N×N tensor is ever
  built (O(N₁² + N₂²) work, flash-style memory). A Python loop over samples with one host sync each.
* ``sdpa_mask``: one batched ``scaled_dot_product_attention`` call with the boolean ``B×1×N×N`` "same region" mask
  (N² bytes per sample; no loop, no sync; O(N²) work).
* ``flex``: torch's ``flex_attention`` with a ``BlockMask``. Tokens are first sorted by region (per sample, in one
  batched gather) so that the mask is two dense diagonal blocks and the kernel skips every cross-region block of
  128×128 tokens; the result is scattered back to raster order. Compiled with ``torch.compile`` on CUDA; elsewhere
  torch runs its eager reference path, which materialises the full score matrix (correct, slow: for tests) and has
  no backward (training with it off CUDA is a :class:`ConfigError`).

:func:`dense_region_attention` is the literal formula with an explicit −∞ bias, kept as the reference for tests
and the benchmark. (The release adds −100, a finite stand-in for −∞; the difference is below e⁻¹⁰⁰ per weight.)

The mask reaches the processors through ``cross_attention_kwargs={"focus": FocusRegions(...)}``: a per-call,
immutable argument, so concurrent forwards never share state and no processor attribute is mutated from outside.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from magicbokeh.errors import ConfigError, InvalidInputError

FOCUS_KWARG = "focus"
"""Name of the ``cross_attention_kwargs`` entry that carries the :class:`FocusRegions` of the current forward."""
ATTENTION_BACKENDS = ("gather", "sdpa_mask", "flex")
"""How FAMA's masked branch is computed (module docstring); all equal :func:`dense_region_attention`."""
DEFAULT_ATTENTION_BACKEND = "gather"


class FocusRegions:
    """The in-focus/out-of-focus partition of one forward pass, resolvable at any token grid.

    ``in_focus`` is a boolean ``B×1×H×W`` map (pixel or latent resolution). A layer with N tokens works on an
    ``(H/f)×(W/f)`` grid with ``f = √(H·W/N)``; the map is nearest-downsampled to it (as the release does), so any
    aspect ratio works. Partitions are cached per token count inside this per-call object (3 layers share a grid).
    """

    def __init__(self, in_focus: torch.Tensor):
        if in_focus.ndim != 4 or in_focus.shape[1] != 1 or in_focus.dtype != torch.bool:
            raise InvalidInputError(
                f"in_focus must be a boolean B×1×H×W map, got {in_focus.dtype} {tuple(in_focus.shape)}"
            )
        self.in_focus = in_focus
        self._token_masks: dict[int, torch.Tensor] = {}
        self._derived: dict[Any, Any] = {}

    def grid(self, num_tokens: int) -> tuple[int, int]:
        """The ``(h, w)`` latent grid of a layer with ``num_tokens`` tokens."""
        height, width = self.in_focus.shape[-2:]
        factor = round(math.sqrt(height * width / num_tokens))
        if factor < 1 or height % factor or width % factor or (height // factor) * (width // factor) != num_tokens:
            raise InvalidInputError(
                f"cannot place {num_tokens} tokens on the {height}×{width} focus map: the image size must be a "
                "multiple of the model stride"
            )
        return height // factor, width // factor

    def token_mask(self, num_tokens: int) -> torch.Tensor:
        """Boolean ``B×N``: True for in-focus tokens, in the row-major order of the attention's tokens."""
        if num_tokens not in self._token_masks:
            grid = self.grid(num_tokens)
            small = F.interpolate(self.in_focus.float(), size=grid, mode="nearest") > 0.5
            self._token_masks[num_tokens] = small.flatten(1)
        return self._token_masks[num_tokens]

    def derived(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()`` once per ``key`` for this forward: a backend's mask is shared by the layers of one grid."""
        if key not in self._derived:
            self._derived[key] = build()
        return self._derived[key]


def check_attention_backend(backend: str) -> str:
    if backend not in ATTENTION_BACKENDS:
        choices = ", ".join(ATTENTION_BACKENDS)
        raise ConfigError(f"unknown FAMA attention backend '{backend}'; expected one of {choices}")
    return backend


def region_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    token_mask: torch.Tensor | None,
    scale: float,
    backend: str = DEFAULT_ATTENTION_BACKEND,
    regions: FocusRegions | None = None,
) -> torch.Tensor:
    """softmax(QKᵀ·scale + M)V for ``B×heads×N×d`` tensors, M = 0 within a region and −∞ across.

    ``token_mask`` is a boolean ``B×N`` (True = in focus) or None (no mask: one unmasked SDPA call, every backend).
    ``backend`` is one of :data:`ATTENTION_BACKENDS` (module docstring). ``regions``, when given, caches the
    backend's mask for the other layers of the same forward.
    """
    if token_mask is None:
        return F.scaled_dot_product_attention(query, key, value, scale=scale)
    check_attention_backend(backend)
    if backend == "sdpa_mask":
        return _masked_sdpa(query, key, value, token_mask, scale, regions)
    if backend == "flex":
        return _flex_region_attention(query, key, value, token_mask, scale, regions)
    return _gathered_region_attention(query, key, value, token_mask, scale)


def _gathered_region_attention(query, key, value, token_mask, scale) -> torch.Tensor:
    """Each sample's tokens sorted by region, each region attending only to itself (no N×N tensor)."""
    outputs = []
    for sample in range(query.shape[0]):
        q, k, v = query[sample : sample + 1], key[sample : sample + 1], value[sample : sample + 1]
        in_focus = token_mask[sample]
        num_in_focus = int(in_focus.sum())
        if num_in_focus in (0, in_focus.numel()):
            outputs.append(F.scaled_dot_product_attention(q, k, v, scale=scale))
            continue
        # Stable sort puts out-of-focus tokens (False) first, then in-focus ones, keeping raster order inside each.
        order = torch.argsort(in_focus.to(torch.uint8), stable=True)
        split = in_focus.numel() - num_in_focus
        q, k, v = q[:, :, order], k[:, :, order], v[:, :, order]
        parts = [
            F.scaled_dot_product_attention(q[:, :, part], k[:, :, part], v[:, :, part], scale=scale)
            for part in (slice(0, split), slice(split, None))
        ]
        outputs.append(torch.cat(parts, dim=2)[:, :, torch.argsort(order)])
    return torch.cat(outputs, dim=0)


def _same_region(token_mask: torch.Tensor) -> torch.Tensor:
    """Boolean ``B×1×N×N``: True where query and key tokens share a region (SDPA's "may attend")."""
    return token_mask[:, None, :, None] == token_mask[:, None, None, :]


def _masked_sdpa(query, key, value, token_mask, scale, regions) -> torch.Tensor:
    num_tokens = token_mask.shape[1]
    if regions is None:
        same_region = _same_region(token_mask)
    else:
        same_region = regions.derived(("sdpa_mask", num_tokens, token_mask.device), lambda: _same_region(token_mask))
    return F.scaled_dot_product_attention(query, key, value, attn_mask=same_region, scale=scale)


_compiled_flex_attention: Callable | None = None


def _flex_kernel(device: torch.device) -> Callable:
    """``flex_attention`` compiled once per process on CUDA (its fused kernel); the eager reference elsewhere."""
    global _compiled_flex_attention
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if _compiled_flex_attention is None:
        _compiled_flex_attention = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex_attention


def _sorted_block_mask(token_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Per-sample region sort order ``B×N`` and the ``BlockMask`` of the sorted tokens."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, num_tokens = token_mask.shape
    # Stable: out-of-focus tokens first, then in-focus ones, raster order kept inside each region.
    order = torch.argsort(token_mask.to(torch.uint8), dim=1, stable=True)
    sorted_in_focus = token_mask.gather(1, order)

    def same_region(b, h, q_index, kv_index):
        return sorted_in_focus[b, q_index] == sorted_in_focus[b, kv_index]

    block_mask = create_block_mask(same_region, batch, None, num_tokens, num_tokens, device=token_mask.device)
    return order, block_mask


def _flex_region_attention(query, key, value, token_mask, scale, regions) -> torch.Tensor:
    if query.device.type != "cuda" and torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise ConfigError(
            "the flex FAMA backend cannot train off CUDA (torch's flex_attention has no CPU backward); "
            "use model.attention_backend=gather or sdpa_mask"
        )
    num_tokens = token_mask.shape[1]
    if regions is None:
        order, block_mask = _sorted_block_mask(token_mask)
    else:
        cache_key = ("flex", num_tokens, token_mask.device)
        order, block_mask = regions.derived(cache_key, lambda: _sorted_block_mask(token_mask))

    def token_index(tensor: torch.Tensor) -> torch.Tensor:
        return order[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[3])

    sorted_qkv = [tensor.gather(2, token_index(tensor)) for tensor in (query, key, value)]
    with warnings.catch_warnings():
        # Off CUDA the eager path is the documented choice (module docstring), not an accident to warn about.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = _flex_kernel(query.device)(*sorted_qkv, block_mask=block_mask, scale=scale)
    return torch.empty_like(out).scatter_(2, token_index(out), out)


def dense_region_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, token_mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Reference: the paper's formula with an explicit ``B×heads×N×N`` float bias (0 / −∞). Slow and memory-hungry."""
    scores = query @ key.transpose(-1, -2) * scale
    if token_mask is not None:
        same_region = token_mask[:, None, :, None] == token_mask[:, None, None, :]
        bias = torch.zeros(scores.shape, dtype=scores.dtype, device=scores.device)
        bias = bias.masked_fill(~same_region, float("-inf"))
        scores = scores + bias
    return scores.softmax(dim=-1) @ value


def _lora_pair(features: int, rank: int) -> nn.Sequential:
    """``B·A`` with A Kaiming-uniform and B zero (so the branch starts as a no-op); keys ``.0`` = A, ``.1`` = B."""
    down = nn.Linear(features, rank, bias=False)
    up = nn.Linear(rank, features, bias=False)
    nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
    nn.init.zeros_(up.weight)
    return nn.Sequential(down, up)


def _check_plain_self_attention(attn: Attention, encoder_hidden_states, attention_mask) -> None:
    if encoder_hidden_states is not None or attention_mask is not None:
        raise ConfigError("FAMA processors handle unmasked self-attention only (install them on attn1 layers)")
    if attn.group_norm is not None or attn.spatial_norm is not None or attn.norm_q is not None:
        raise ConfigError("FAMA processors do not support group/spatial/QK normalisation inside attention")


class FocusAwareAttnProcessor(nn.Module):
    """FAMA for one ``attn1`` layer: the bokeh LoRA (q, k, v, out) and the region-masked second branch.

    Call signature is the diffusers processor one plus ``focus`` (a :class:`FocusRegions`, or None for "no mask":
    the ``ablation_no_fama`` variant and any caller without a defocus map). ``__call__`` is overridden, as in
    diffusers' own ``nn.Module`` processors, so diffusers sees the ``focus`` parameter and forwards it.
    ``backend`` (one of :data:`ATTENTION_BACKENDS`) only changes how h₂ is computed, never its value.
    """

    def __init__(self, hidden_size: int, rank: int, alpha: float = 1.0, backend: str = DEFAULT_ATTENTION_BACKEND):
        super().__init__()
        if rank < 1:
            raise ConfigError(f"bokeh LoRA rank must be ≥ 1, got {rank}")
        self.hidden_size, self.rank, self.alpha = hidden_size, rank, alpha
        self.backend = check_attention_backend(backend)
        self.to_q_lora = _lora_pair(hidden_size, rank)
        self.to_k_lora = _lora_pair(hidden_size, rank)
        self.to_v_lora = _lora_pair(hidden_size, rank)
        self.to_out_lora = _lora_pair(hidden_size, rank)

    @property
    def scaling(self) -> float:
        """s = α / r."""
        return self.alpha / self.rank

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        focus: FocusRegions | None = None,
    ) -> torch.Tensor:
        _check_plain_self_attention(attn, encoder_hidden_states, attention_mask)
        residual = hidden_states
        spatial_shape = None
        if hidden_states.ndim == 4:
            spatial_shape = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, tokens, attn.heads, -1).transpose(1, 2)

        def merge(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(1, 2).reshape(batch, tokens, -1)

        s = self.scaling
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        # h₁: the ordinary, unmasked attention of the (SR-LoRA) projections.
        h1 = F.scaled_dot_product_attention(heads(query), heads(key), heads(value), scale=attn.scale)
        # h₂: bokeh-LoRA projections Q′, K′, V′ attending within their focus region only.
        query2 = query + s * self.to_q_lora(hidden_states)
        key2 = key + s * self.to_k_lora(hidden_states)
        value2 = value + s * self.to_v_lora(hidden_states)
        token_mask = None if focus is None else focus.token_mask(tokens).to(query.device)
        h2 = region_attention(
            heads(query2), heads(key2), heads(value2), token_mask, attn.scale, backend=self.backend, regions=focus
        )

        out = attn.to_out[0](merge(h1).to(query.dtype)) + s * self.to_out_lora(merge(h2).to(query.dtype))
        out = attn.to_out[1](out)
        if spatial_shape is not None:
            out = out.transpose(1, 2).reshape(spatial_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class FocusIgnoringAttnProcessor(AttnProcessor2_0):
    """Stock SDPA attention that accepts (and ignores) ``focus``, so layers without FAMA raise no kwarg warning."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        focus: FocusRegions | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def is_fama_layer(processor_name: str) -> bool:
    """FAMA sits on the self-attention of every transformer block in the UNet up blocks (as released)."""
    return processor_name.startswith("up_blocks.") and processor_name.endswith("attn1.processor")


def install_focus_processors(
    unet: nn.Module, rank: int, alpha: float, backend: str = DEFAULT_ATTENTION_BACKEND
) -> list[str]:
    """Put a fresh :class:`FocusAwareAttnProcessor` on every up-block ``attn1`` and a focus-ignoring stock processor
    everywhere else; returns the FAMA processor names (``up_blocks.….attn1.processor``)."""
    layers = {name: module for name, module in unet.named_modules() if isinstance(module, Attention)}
    processors, fama = {}, []
    for name, module in layers.items():
        processor_name = f"{name}.processor"
        if is_fama_layer(processor_name):
            processors[processor_name] = FocusAwareAttnProcessor(module.to_q.in_features, rank, alpha, backend)
            fama.append(processor_name)
        else:
            processors[processor_name] = FocusIgnoringAttnProcessor()
    if not fama:
        raise ConfigError("the UNet has no up-block self-attention: FAMA needs CrossAttnUpBlock2D up blocks")
    unet.set_attn_processor(processors)
    return fama


def set_attention_backend(module: nn.Module, backend: str) -> int:
    """Switch every FAMA processor inside ``module`` (a model or its UNet) to ``backend``; returns how many.

    The backend changes no weight, so a checkpoint loads under any of them. A model's ``config`` (what
    ``save_pretrained`` records) is updated too.
    """
    check_attention_backend(backend)
    processors = [m for m in module.modules() if isinstance(m, FocusAwareAttnProcessor)]
    if not processors:
        raise ConfigError(f"{type(module).__name__} has no FAMA processors to switch")
    for processor in processors:
        processor.backend = backend
    config = getattr(module, "config", None)
    if isinstance(config, dict) and "attention_backend" in config:
        config["attention_backend"] = backend
    return len(processors)
