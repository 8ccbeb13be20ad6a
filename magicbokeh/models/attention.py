"""Focus-aware masked attention (FAMA, DESIGN §1) as a diffusers attention processor, and its ablation axes.

In every self-attention (``attn1``) of the UNet up blocks the released model adds a "bokeh LoRA" branch:

    h₁ = softmax(Q Kᵀ/√d) V                                (ordinary attention, base + SR-LoRA projections)
    Q′ = Q + s·B_q A_q x,  K′ = K + s·B_k A_k x,  V′ = V + s·B_v A_v x
    h₂ = softmax(Q′ K′ᵀ/√d + M) V′,   M_ij = 0 if tokens i, j are in the same region, −∞ otherwise
    out = to_out(h₁) + s·B_o A_o h₂,  s = α / r

The regions are "in focus" (defocus ≤ 0.1) and "out of focus". :class:`FamaSettings` (``model.fama``) turns each
choice into an axis: which layers carry the branch (``layers``: ``up`` as released, ``down``, ``all``), the mask
(``mask``), the in-focus ``threshold``, the branch's LoRA ``rank``/``alpha`` and the ``backend``. The masks:

* ``hard`` (released): the two regions above;
* ``levels:N``: N defocus bands (:func:`~magicbokeh.optics.defocus.defocus_bands`: band 0 in focus, bands 1…N−1
  split (threshold, 1] evenly); M_ij = 0 within a band, −∞ across. ``levels:2`` is ``hard``;
* ``none``: M ≡ 0, the bokeh LoRA attends everywhere (the "w/o FAMA" ablation);
* ``soft``: M_ij = −|δᵢ − δⱼ|/τ with δ the token defocus and τ = ``tau``: attention fades with the defocus
  difference instead of stopping at a region border. This is a **dense** ``B×1×N×N`` float bias (4 N² bytes per
  sample, for every forward) passed to one SDPA call; ``python scripts/benchmark.py model`` measures its cost.

The partition masks (``hard``, ``levels:N``) have three interchangeable backends (:data:`ATTENTION_BACKENDS`;
``model.fama.backend``, :func:`set_attention_backend`); they need only each token's band index:

* ``gather`` (default): because M only separates disjoint sets, h₂ is ordinary attention inside each set. Each
  sample's tokens are sorted by band and ``scaled_dot_product_attention`` runs on each non-empty band, so no N×N
  tensor is ever built (O(Σ Nₖ²) work, flash-style memory). A Python loop over samples with one host sync each.
* ``sdpa_mask``: one batched ``scaled_dot_product_attention`` call with the boolean ``B×1×N×N`` "same band" mask
  (N² bytes per sample; no loop, no sync; O(N²) work).
* ``flex``: torch's ``flex_attention`` with a ``BlockMask``. Tokens are first sorted by band (per sample, in one
  batched gather) so that the mask is dense diagonal blocks and the kernel skips every cross-band block of
  128×128 tokens; the result is scattered back to raster order. Compiled with ``torch.compile`` on CUDA; elsewhere
  torch runs its eager reference path, which materialises the full score matrix (correct, slow: for tests) and has
  no backward (training with it off CUDA is a :class:`ConfigError`).

:func:`dense_region_attention` is the literal formula with an explicit −∞ bias and :func:`dense_soft_attention`
the soft one, kept as references for tests and the benchmark. (The release adds −100, a finite stand-in for −∞;
the difference is below e⁻¹⁰⁰ per weight.)

The mask reaches the processors through ``cross_attention_kwargs={"focus": FocusRegions(...)}``: a per-call,
immutable argument, so concurrent forwards never share state and no processor attribute is mutated from outside.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from magicbokeh.errors import ConfigError, InvalidInputError
from magicbokeh.optics.defocus import IN_FOCUS_THRESHOLD, defocus_bands

FOCUS_KWARG = "focus"
"""Name of the ``cross_attention_kwargs`` entry that carries the :class:`FocusRegions` of the current forward."""
ATTENTION_BACKENDS = ("gather", "sdpa_mask", "flex")
"""How FAMA's partition masks are computed (module docstring); all equal :func:`dense_region_attention`."""
DEFAULT_ATTENTION_BACKEND = "gather"
FAMA_LAYERS = ("up", "down", "all")
"""Which UNet self-attention layers carry the bokeh branch: the up blocks (as released), the down blocks, or every
``attn1`` of the UNet (down, mid when not pruned, up)."""
FAMA_MASKS = ("hard", "none", "soft", "levels:N")
"""FAMA's masks (module docstring); ``levels:N`` with an integer N ≥ 2."""
_LAYER_PREFIXES = {"up": ("up_blocks.",), "down": ("down_blocks.",), "all": ("",)}


def check_attention_backend(backend: str) -> str:
    if backend not in ATTENTION_BACKENDS:
        choices = ", ".join(ATTENTION_BACKENDS)
        raise ConfigError(f"unknown FAMA attention backend '{backend}'; expected one of {choices}")
    return backend


def mask_bands(mask: str) -> int | None:
    """The number of bands of a partition mask (``hard`` → 2, ``levels:N`` → N); None for ``none`` and ``soft``."""
    if mask == "hard":
        return 2
    if mask in ("none", "soft"):
        return None
    kind, _, count = str(mask).partition(":")
    if kind == "levels" and count.isdigit() and int(count) >= 2:
        return int(count)
    raise ConfigError(f"unknown FAMA mask '{mask}'; expected one of {', '.join(FAMA_MASKS)} (N an integer ≥ 2)")


@dataclasses.dataclass(frozen=True)
class FamaSettings:
    """FAMA's configuration (``model.fama``); the defaults are the released model's, except ``rank`` which the
    release stores in its checkpoint (REFERENCE §1.1; 64 is its ``prepare_for_inference`` default).

    ``layers``: :data:`FAMA_LAYERS`. ``mask``: :data:`FAMA_MASKS`. ``threshold``: in focus ⇔ defocus ≤ threshold
    (band 0 of every partition). ``tau``: the soft mask's temperature τ (only ``soft`` reads it). ``rank``/``alpha``:
    the bokeh LoRA (scale α/r). ``backend``: :data:`ATTENTION_BACKENDS` (partition masks only; speed, not values).
    """

    layers: str = "up"
    mask: str = "hard"
    threshold: float = IN_FOCUS_THRESHOLD
    tau: float = 0.1
    rank: int = 64
    alpha: float = 1.0
    backend: str = DEFAULT_ATTENTION_BACKEND

    def __post_init__(self) -> None:
        if self.layers not in FAMA_LAYERS:
            raise ConfigError(f"unknown FAMA layers '{self.layers}'; expected one of {', '.join(FAMA_LAYERS)}")
        mask_bands(self.mask)
        check_attention_backend(self.backend)
        if not 0 <= self.threshold < 1:
            raise ConfigError(f"model.fama.threshold must be in [0, 1), got {self.threshold}")
        if not self.tau > 0:
            raise ConfigError(f"model.fama.tau (the soft mask's temperature) must be > 0, got {self.tau}")
        if int(self.rank) != self.rank or self.rank < 1:
            raise ConfigError(f"bokeh LoRA rank must be an integer ≥ 1, got {self.rank}")

    @classmethod
    def from_config(cls, settings: FamaSettings | Mapping[str, Any] | None) -> FamaSettings:
        if settings is None:
            return cls()
        if isinstance(settings, FamaSettings):
            return settings
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ConfigError(f"unknown model.fama key(s) {unknown}; known: {known}")
        return cls(**dict(settings))

    def to_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def focus_regions(self, defocus: torch.Tensor) -> FocusRegions | None:
        """What the masked branch needs from a ``B×1×H×W`` defocus map (None for ``mask=none``: no mask at all)."""
        if self.mask == "none":
            return None
        if self.mask == "soft":
            return FocusRegions(None, defocus=defocus, tau=self.tau)
        return FocusRegions(defocus_bands(defocus, mask_bands(self.mask), self.threshold))


class FocusRegions:
    """What FAMA's masked branch needs from one forward's defocus map, resolvable at any token grid.

    ``regions`` is a ``B×1×H×W`` partition (pixel or latent resolution): boolean (True = in focus, the released
    two regions) or an integer band index (:func:`~magicbokeh.optics.defocus.defocus_bands`). For the soft mask it is
    None and ``defocus`` (float ``B×1×H×W``) with ``tau`` is given instead. A layer with N tokens works on an
    ``(H/f)×(W/f)`` grid with ``f = √(H·W/N)``; the maps are nearest-downsampled to it (as the release does), so any
    aspect ratio works. Token maps are cached per token count inside this per-call object (layers share grids).
    """

    def __init__(self, regions: torch.Tensor | None, *, defocus: torch.Tensor | None = None, tau: float | None = None):
        if regions is None:
            if defocus is None or tau is None:
                raise ConfigError("FocusRegions needs a partition map, or a defocus map with tau (soft mask)")
            source = defocus
        else:
            if defocus is not None:
                raise ConfigError("FocusRegions takes a partition map or a defocus map (soft mask), not both")
            if regions.dtype == torch.bool:
                regions = (~regions).to(torch.int64)  # band 0 = in focus, as defocus_bands numbers them
            elif regions.dtype.is_floating_point or regions.dtype.is_complex:
                raise InvalidInputError(f"the region map must be boolean or integer, got {regions.dtype}")
            source = regions
        if source.ndim != 4 or source.shape[1] != 1:
            raise InvalidInputError(f"the focus map must be B×1×H×W, got {source.dtype} {tuple(source.shape)}")
        self.bands = regions
        self.defocus = defocus
        self.tau = None if tau is None else float(tau)
        self._shape = tuple(source.shape[-2:])
        self._token_maps: dict[Any, torch.Tensor] = {}
        self._derived: dict[Any, Any] = {}

    @property
    def soft(self) -> bool:
        """True for the soft mask (a defocus-difference bias), False for a partition (hard, levels:N)."""
        return self.bands is None

    @property
    def in_focus(self) -> torch.Tensor:
        """Boolean ``B×1×H×W`` in-focus map (band 0) of a partition."""
        self._need_partition()
        return self.bands == 0

    def grid(self, num_tokens: int) -> tuple[int, int]:
        """The ``(h, w)`` latent grid of a layer with ``num_tokens`` tokens."""
        height, width = self._shape
        factor = round(math.sqrt(height * width / num_tokens))
        if factor < 1 or height % factor or width % factor or (height // factor) * (width // factor) != num_tokens:
            raise InvalidInputError(
                f"cannot place {num_tokens} tokens on the {height}×{width} focus map: the image size must be a "
                "multiple of the model stride"
            )
        return height // factor, width // factor

    def _nearest(self, name: str, full: torch.Tensor, num_tokens: int) -> torch.Tensor:
        key = (name, num_tokens)
        if key not in self._token_maps:
            grid = self.grid(num_tokens)
            # Nearest sampling picks one pixel per token, so a band of the sampled defocus is the sampled band.
            small = F.interpolate(full.to(torch.float32), size=grid, mode="nearest").flatten(1)
            self._token_maps[key] = small if name == "defocus" else small.to(torch.int64)  # band indices: exact
        return self._token_maps[key]

    def _need_partition(self) -> None:
        if self.soft:
            raise ConfigError("the soft FAMA mask has no regions (it biases by defocus difference)")

    def token_bands(self, num_tokens: int) -> torch.Tensor:
        """Integer ``B×N`` band index of every token (0 = in focus), in the row-major order of the attention."""
        self._need_partition()
        return self._nearest("bands", self.bands, num_tokens)

    def token_mask(self, num_tokens: int) -> torch.Tensor:
        """Boolean ``B×N``: True for in-focus tokens (band 0)."""
        return self.token_bands(num_tokens) == 0

    def token_defocus(self, num_tokens: int) -> torch.Tensor:
        """Float ``B×N`` defocus of every token (soft mask)."""
        if not self.soft:
            raise ConfigError("token defocus is only carried for the soft FAMA mask")
        return self._nearest("defocus", self.defocus, num_tokens)

    def derived(self, key: Any, build: Callable[[], Any]) -> Any:
        """``build()`` once per ``key`` for this forward: a backend's mask is shared by the layers of one grid."""
        if key not in self._derived:
            self._derived[key] = build()
        return self._derived[key]


def region_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    token_regions: torch.Tensor | None,
    scale: float,
    backend: str = DEFAULT_ATTENTION_BACKEND,
    regions: FocusRegions | None = None,
) -> torch.Tensor:
    """softmax(QKᵀ·scale + M)V for ``B×heads×N×d`` tensors, M = 0 within a region and −∞ across.

    ``token_regions`` is ``B×N``: boolean (True = in focus: two regions) or an integer band index (any number of
    regions), or None (no mask: one unmasked SDPA call, every backend). ``backend`` is one of
    :data:`ATTENTION_BACKENDS` (module docstring). ``regions``, when given, caches the backend's mask for the other
    layers of the same forward.
    """
    if token_regions is None:
        return F.scaled_dot_product_attention(query, key, value, scale=scale)
    check_attention_backend(backend)
    if backend == "sdpa_mask":
        return _masked_sdpa(query, key, value, token_regions, scale, regions)
    if backend == "flex":
        return _flex_region_attention(query, key, value, token_regions, scale, regions)
    return _gathered_region_attention(query, key, value, token_regions, scale)


def _sort_key(token_regions: torch.Tensor) -> torch.Tensor:
    """Regions as sortable integers (argsort has no boolean kernel)."""
    return token_regions.to(torch.int64)


def _gathered_region_attention(query, key, value, token_regions, scale) -> torch.Tensor:
    """Each sample's tokens sorted by region, each region attending only to itself (no N×N tensor)."""
    outputs = []
    for sample in range(query.shape[0]):
        q, k, v = query[sample : sample + 1], key[sample : sample + 1], value[sample : sample + 1]
        labels = _sort_key(token_regions[sample])
        # Stable: regions in ascending label order, raster order kept inside each.
        order = torch.argsort(labels, stable=True)
        sizes = [size for size in torch.bincount(labels - labels.min()).tolist() if size]  # the one host sync
        if len(sizes) == 1:
            outputs.append(F.scaled_dot_product_attention(q, k, v, scale=scale))
            continue
        q, k, v = q[:, :, order], k[:, :, order], v[:, :, order]
        parts = [
            F.scaled_dot_product_attention(q_part, k_part, v_part, scale=scale)
            for q_part, k_part, v_part in zip(q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2), strict=True)
        ]
        outputs.append(torch.cat(parts, dim=2)[:, :, torch.argsort(order)])
    return torch.cat(outputs, dim=0)


def _same_region(token_regions: torch.Tensor) -> torch.Tensor:
    """Boolean ``B×1×N×N``: True where query and key tokens share a region (SDPA's "may attend")."""
    return token_regions[:, None, :, None] == token_regions[:, None, None, :]


def _masked_sdpa(query, key, value, token_regions, scale, regions) -> torch.Tensor:
    num_tokens = token_regions.shape[1]
    if regions is None:
        same_region = _same_region(token_regions)
    else:
        cache_key = ("sdpa_mask", num_tokens, token_regions.device)
        same_region = regions.derived(cache_key, lambda: _same_region(token_regions))
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


def _sorted_block_mask(token_regions: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Per-sample region sort order ``B×N`` and the ``BlockMask`` of the sorted tokens."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, num_tokens = token_regions.shape
    labels = _sort_key(token_regions)
    # Stable: regions in ascending label order, raster order kept inside each.
    order = torch.argsort(labels, dim=1, stable=True)
    sorted_labels = labels.gather(1, order)

    def same_region(b, h, q_index, kv_index):
        return sorted_labels[b, q_index] == sorted_labels[b, kv_index]

    block_mask = create_block_mask(same_region, batch, None, num_tokens, num_tokens, device=token_regions.device)
    return order, block_mask


def _flex_region_attention(query, key, value, token_regions, scale, regions) -> torch.Tensor:
    if query.device.type != "cuda" and torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        raise ConfigError(
            "the flex FAMA backend cannot train off CUDA (torch's flex_attention has no CPU backward); "
            "use model.fama.backend=gather or sdpa_mask"
        )
    num_tokens = token_regions.shape[1]
    if regions is None:
        order, block_mask = _sorted_block_mask(token_regions)
    else:
        cache_key = ("flex", num_tokens, token_regions.device)
        order, block_mask = regions.derived(cache_key, lambda: _sorted_block_mask(token_regions))

    def token_index(tensor: torch.Tensor) -> torch.Tensor:
        return order[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[3])

    sorted_qkv = [tensor.gather(2, token_index(tensor)) for tensor in (query, key, value)]
    with warnings.catch_warnings():
        # Off CUDA the eager path is the documented choice (module docstring), not an accident to warn about.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = _flex_kernel(query.device)(*sorted_qkv, block_mask=block_mask, scale=scale)
    return torch.empty_like(out).scatter_(2, token_index(out), out)


def dense_region_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, token_regions: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Reference: the paper's formula with an explicit ``B×heads×N×N`` float bias (0 / −∞). Slow and memory-hungry.

    ``token_regions``: boolean or integer ``B×N`` (as :func:`region_attention`), or None (no bias)."""
    scores = query @ key.transpose(-1, -2) * scale
    if token_regions is not None:
        bias = torch.zeros(scores.shape, dtype=scores.dtype, device=scores.device)
        bias = bias.masked_fill(~_same_region(token_regions), float("-inf"))
        scores = scores + bias
    return scores.softmax(dim=-1) @ value


def soft_bias(token_defocus: torch.Tensor, tau: float, dtype: torch.dtype) -> torch.Tensor:
    """``B×1×N×N`` additive bias of the soft mask: −|δᵢ − δⱼ|/τ (0 between tokens of equal defocus)."""
    difference = (token_defocus[:, None, :, None] - token_defocus[:, None, None, :]).abs()
    return (-difference / tau).to(dtype)


def soft_region_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    token_defocus: torch.Tensor,
    tau: float,
    scale: float,
    regions: FocusRegions | None = None,
) -> torch.Tensor:
    """softmax(QKᵀ·scale − |δᵢ − δⱼ|/τ)V: one SDPA call with the dense float bias (shared across heads, cached per
    grid in ``regions``). Every token pair gets its own weight, so no partition shortcut applies."""
    num_tokens = token_defocus.shape[1]

    def build() -> torch.Tensor:
        return soft_bias(token_defocus.to(query.device), tau, query.dtype)

    bias = build() if regions is None else regions.derived(("soft", num_tokens, query.device, query.dtype), build)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scale)


def dense_soft_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, token_defocus: torch.Tensor, tau: float, scale: float
) -> torch.Tensor:
    """Reference of the soft mask: the scores, the explicit bias −|δᵢ − δⱼ|/τ, softmax, values (float math)."""
    scores = query @ key.transpose(-1, -2) * scale
    difference = (token_defocus[:, None, :, None] - token_defocus[:, None, None, :]).abs()
    return (scores - difference.to(scores.dtype) / tau).softmax(dim=-1) @ value


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
    ``model.fama.mask=none``, the ``ablation_no_fama`` variant, and any caller without a defocus map); the regions
    say which mask applies (a partition, or the soft bias). ``__call__`` is overridden, as in diffusers' own
    ``nn.Module`` processors, so diffusers sees the ``focus`` parameter and forwards it. ``backend`` (one of
    :data:`ATTENTION_BACKENDS`) only changes how a partition mask is computed, never its value.
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
        # h₂: bokeh-LoRA projections Q′, K′, V′ under the forward's FAMA mask (within their region, as released).
        query2 = query + s * self.to_q_lora(hidden_states)
        key2 = key + s * self.to_k_lora(hidden_states)
        value2 = value + s * self.to_v_lora(hidden_states)
        h2 = self._masked_branch(heads(query2), heads(key2), heads(value2), focus, attn.scale)

        out = attn.to_out[0](merge(h1).to(query.dtype)) + s * self.to_out_lora(merge(h2).to(query.dtype))
        out = attn.to_out[1](out)
        if spatial_shape is not None:
            out = out.transpose(1, 2).reshape(spatial_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _masked_branch(self, query, key, value, focus: FocusRegions | None, scale: float) -> torch.Tensor:
        """h₂ under the forward's mask: none (focus None), soft (dense bias) or a partition (the backend)."""
        tokens = query.shape[2]
        if focus is None:
            return F.scaled_dot_product_attention(query, key, value, scale=scale)
        if focus.soft:
            return soft_region_attention(query, key, value, focus.token_defocus(tokens), focus.tau, scale, focus)
        token_bands = focus.token_bands(tokens).to(query.device)
        return region_attention(query, key, value, token_bands, scale, backend=self.backend, regions=focus)


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


def is_fama_layer(processor_name: str, layers: str = "up") -> bool:
    """Whether a UNet processor carries the bokeh branch: the self-attention (``attn1``) of every transformer block
    in the up blocks (``layers="up"``, as released), the down blocks (``down``), or anywhere in the UNet (``all``)."""
    if layers not in FAMA_LAYERS:
        raise ConfigError(f"unknown FAMA layers '{layers}'; expected one of {', '.join(FAMA_LAYERS)}")
    return processor_name.endswith("attn1.processor") and processor_name.startswith(_LAYER_PREFIXES[layers])


def install_focus_processors(
    unet: nn.Module, rank: int, alpha: float, backend: str = DEFAULT_ATTENTION_BACKEND, layers: str = "up"
) -> list[str]:
    """Put a fresh :class:`FocusAwareAttnProcessor` on every ``attn1`` that ``layers`` selects (:func:`is_fama_layer`)
    and a focus-ignoring stock processor everywhere else; returns the FAMA processor names."""
    attention_layers = {name: module for name, module in unet.named_modules() if isinstance(module, Attention)}
    processors, fama = {}, []
    for name, module in attention_layers.items():
        processor_name = f"{name}.processor"
        if is_fama_layer(processor_name, layers):
            processors[processor_name] = FocusAwareAttnProcessor(module.to_q.in_features, rank, alpha, backend)
            fama.append(processor_name)
        else:
            processors[processor_name] = FocusIgnoringAttnProcessor()
    if not fama:
        raise ConfigError(
            f"the UNet has no self-attention in the layers model.fama.layers={layers} selects (FAMA needs "
            "transformer blocks there, e.g. CrossAttnUpBlock2D / CrossAttnDownBlock2D)"
        )
    unet.set_attn_processor(processors)
    return fama


def set_attention_backend(module: nn.Module, backend: str) -> int:
    """Switch every FAMA processor inside ``module`` (a model or its UNet) to ``backend``; returns how many.

    The backend changes no weight, so a checkpoint loads under any of them. A model's ``config`` (what
    ``save_pretrained`` records, ``fama.backend``) and its :class:`FamaSettings` are updated too.
    """
    check_attention_backend(backend)
    processors = [m for m in module.modules() if isinstance(m, FocusAwareAttnProcessor)]
    if not processors:
        raise ConfigError(f"{type(module).__name__} has no FAMA processors to switch")
    for processor in processors:
        processor.backend = backend
    config = getattr(module, "config", None)
    if isinstance(config, dict) and isinstance(config.get("fama"), dict):
        config["fama"] = {**config["fama"], "backend": backend}
    if isinstance(getattr(module, "fama", None), FamaSettings):
        module.fama = dataclasses.replace(module.fama, backend=backend)
    return len(processors)
