"""State-dict layouts of Depth-Anything-V2 weights, and conversion to the module names of our network.

Three layouts reach us:

* **original** — the ``.pth`` files of the Depth-Anything-V2 release (and MagicBokeh's ``DAdepth.pth``, a DDP
  checkpoint with the weights under ``"model"`` and every key prefixed ``module.``). The DINOv2 encoder lives under
  ``pretrained.`` with fused ``attn.qkv`` projections; the DPT head lives under ``depth_head.`` with its
  ``projects``/``resize_layers`` (reassembly), ``scratch.layerN_rn`` (3×3 projections to the fusion width),
  ``scratch.refinenetN`` (fusion blocks, numbered from the finest map) and ``scratch.output_conv*`` (the head).
* **hf-legacy** — the Hugging Face hub files (``depth-anything/Depth-Anything-V2-*-hf``), saved before transformers 5
  renamed the DINOv2 attention (``attention.attention.query`` … ``attention.output.dense``).
* **hf** — the module names of transformers' ``DepthAnythingForDepthEstimation`` as installed (``attention.q_proj``
  … ``attention.o_proj``); what :func:`to_hf_state_dict` returns and what our own checkpoints store.

The mapping was worked out from the two architectures' module trees (both are the DPT design of Ranftl et al.
2021), not copied from a conversion script.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from magicbokeh.errors import ConfigError

# Keys under which training scripts commonly nest the weights inside a checkpoint dictionary.
_NESTING_KEYS = ("model", "state_dict", "module")
# DDP / torch.compile wrappers prefix every key.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# transformers < 5 names of the DINOv2 attention projections → current names (a pure rename, same tensors).
_LEGACY_HF_RENAMES = (
    (".attention.attention.query.", ".attention.q_proj."),
    (".attention.attention.key.", ".attention.k_proj."),
    (".attention.attention.value.", ".attention.v_proj."),
    (".attention.output.dense.", ".attention.o_proj."),
)

# Encoder keys other than the per-block ones: original name → HF name.
_ORIGINAL_ENCODER_STEM = {
    "pretrained.cls_token": "backbone.embeddings.cls_token",
    "pretrained.mask_token": "backbone.embeddings.mask_token",
    "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
    "pretrained.patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
    "pretrained.patch_embed.proj.bias": "backbone.embeddings.patch_embeddings.projection.bias",
    "pretrained.norm.weight": "backbone.layernorm.weight",
    "pretrained.norm.bias": "backbone.layernorm.bias",
}

# Inside one transformer block: original sub-name → HF sub-name (qkv is split separately).
_ORIGINAL_BLOCK_PARTS = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
}

# Head convolutions: output_conv2 is nn.Sequential(conv, ReLU, conv, ReLU), hence indices 0 and 2.
_ORIGINAL_HEAD = {
    "depth_head.scratch.output_conv1": "head.conv1",
    "depth_head.scratch.output_conv2.0": "head.conv2",
    "depth_head.scratch.output_conv2.2": "head.conv3",
}

# Inside a fusion block: the original's residual conv units → HF's pre-activation residual layers.
_ORIGINAL_FUSION_PARTS = {
    "out_conv": "projection",
    "resConfUnit1.conv1": "residual_layer1.convolution1",
    "resConfUnit1.conv2": "residual_layer1.convolution2",
    "resConfUnit2.conv1": "residual_layer2.convolution1",
    "resConfUnit2.conv2": "residual_layer2.convolution2",
}

_BLOCK_KEY = re.compile(r"^pretrained\.blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$")
_REFINENET_KEY = re.compile(r"^depth_head\.scratch\.refinenet(\d)\.(.+)\.(weight|bias)$")
_NUM_FUSION_STAGES = 4


def unwrap_checkpoint(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """Return the flat ``name → tensor`` dict inside a checkpoint (nested under ``model``/``state_dict``, DDP
    ``module.`` prefixes removed)."""
    state = checkpoint
    while not any(isinstance(v, torch.Tensor) for v in state.values()):
        nested = next((state[k] for k in _NESTING_KEYS if isinstance(state.get(k), Mapping)), None)
        if nested is None:
            raise ConfigError(
                "the checkpoint holds no tensors at its top level nor under any of the keys "
                f"{list(_NESTING_KEYS)} (found keys: {sorted(state)[:8]})"
            )
        state = nested
    flat = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        flat[key] = value
    return flat


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"original"``, ``"hf-legacy"`` or ``"hf"``; :class:`ConfigError` when the keys are neither."""
    keys = list(state_dict)
    if any(k.startswith("pretrained.") for k in keys) and any(k.startswith("depth_head.") for k in keys):
        return "original"
    if any(k.startswith("backbone.") for k in keys) and any(k.startswith(("neck.", "head.")) for k in keys):
        legacy = any(".attention.attention." in k or ".attention.output.dense." in k for k in keys)
        return "hf-legacy" if legacy else "hf"
    raise ConfigError(
        "the weights are not a Depth-Anything-V2 state dict: expected keys under 'pretrained.' + 'depth_head.' "
        f"(original release) or 'backbone.' + 'neck.'/'head.' (Hugging Face); first keys found: {keys[:5]}"
    )


def _split_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The original fuses q, k, v into one ``3C×C`` projection (rows in that order); HF keeps three ``C×C``."""
    if tensor.shape[0] % 3:
        raise ConfigError(f"fused qkv tensor of shape {tuple(tensor.shape)} is not divisible into q, k, v")
    return tuple(t.clone() for t in tensor.chunk(3, dim=0))


def _convert_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key in _ORIGINAL_ENCODER_STEM:
            converted[_ORIGINAL_ENCODER_STEM[key]] = value
            continue
        if block := _BLOCK_KEY.match(key):
            index, part, kind = block.groups()
            prefix = f"backbone.encoder.layer.{index}"
            if part == "attn.qkv":
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"), _split_qkv(value)):
                    converted[f"{prefix}.attention.{name}.{kind}"] = chunk
                continue
            full_part = f"{part}.{kind}" if kind == "gamma" else part
            if full_part in _ORIGINAL_BLOCK_PARTS:
                suffix = "" if kind == "gamma" else f".{kind}"
                converted[f"{prefix}.{_ORIGINAL_BLOCK_PARTS[full_part]}{suffix}"] = value
                continue
        if match := re.match(r"^depth_head\.projects\.(\d)\.(weight|bias)$", key):
            converted[f"neck.reassemble_stage.layers.{match[1]}.projection.{match[2]}"] = value
            continue
        if match := re.match(r"^depth_head\.resize_layers\.(\d)\.(weight|bias)$", key):
            converted[f"neck.reassemble_stage.layers.{match[1]}.resize.{match[2]}"] = value
            continue
        if match := re.match(r"^depth_head\.scratch\.layer(\d)_rn\.weight$", key):
            converted[f"neck.convs.{int(match[1]) - 1}.weight"] = value
            continue
        if (refine := _REFINENET_KEY.match(key)) and refine[2] in _ORIGINAL_FUSION_PARTS:
            # refinenet4 fuses the coarsest map first; HF numbers fusion layers in execution order.
            layer = _NUM_FUSION_STAGES - int(refine[1])
            converted[f"neck.fusion_stage.layers.{layer}.{_ORIGINAL_FUSION_PARTS[refine[2]]}.{refine[3]}"] = value
            continue
        if match := re.match(r"^(depth_head\.scratch\.output_conv[12](?:\.\d)?)\.(weight|bias)$", key):
            if match[1] in _ORIGINAL_HEAD:
                converted[f"{_ORIGINAL_HEAD[match[1]]}.{match[2]}"] = value
                continue
        unknown.append(key)
    if unknown:
        raise ConfigError(
            f"{len(unknown)} key(s) of the original Depth-Anything-V2 layout have no counterpart in our network "
            f"(e.g. {unknown[:3]}); the file is probably another variant (metric head, registers, giant/SwiGLU)"
        )
    return converted


def _rename_legacy(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state_dict.items():
        for old, new in _LEGACY_HF_RENAMES:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def to_hf_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """Any supported checkpoint (dict as loaded from disk) → state dict with the installed HF module names."""
    state_dict = unwrap_checkpoint(checkpoint)
    layout = detect_layout(state_dict)
    if layout == "original":
        return _convert_original(state_dict)
    if layout == "hf-legacy":
        return _rename_legacy(state_dict)
    return dict(state_dict)


def to_original_state_dict(hf_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of the original → HF conversion (used to export a student in the release layout, and by tests)."""
    stem = {hf: original for original, hf in _ORIGINAL_ENCODER_STEM.items()}
    block_parts = {hf: original for original, hf in _ORIGINAL_BLOCK_PARTS.items()}
    fusion_parts = {hf: original for original, hf in _ORIGINAL_FUSION_PARTS.items()}
    head = {hf: original for original, hf in _ORIGINAL_HEAD.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in _rename_legacy(hf_state_dict).items():
        if key in stem:
            out[stem[key]] = value
        elif match := re.match(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$", key):
            index, rest = match.groups()
            if qkv_match := re.match(r"^attention\.([qkv])_proj\.(weight|bias)$", rest):
                qkv.setdefault((index, qkv_match[2]), {})[qkv_match[1]] = value
                continue
            part, _, kind = rest.rpartition(".")
            if rest in block_parts:  # layer-scale parameters carry no .weight/.bias suffix
                out[f"pretrained.blocks.{index}.{block_parts[rest]}"] = value
            else:
                out[f"pretrained.blocks.{index}.{block_parts[part]}.{kind}"] = value
        elif match := re.match(r"^neck\.reassemble_stage\.layers\.(\d)\.(projection|resize)\.(weight|bias)$", key):
            group = "projects" if match[2] == "projection" else "resize_layers"
            out[f"depth_head.{group}.{match[1]}.{match[3]}"] = value
        elif match := re.match(r"^neck\.convs\.(\d)\.weight$", key):
            out[f"depth_head.scratch.layer{int(match[1]) + 1}_rn.weight"] = value
        elif match := re.match(r"^neck\.fusion_stage\.layers\.(\d)\.(.+)\.(weight|bias)$", key):
            refinenet = _NUM_FUSION_STAGES - int(match[1])
            out[f"depth_head.scratch.refinenet{refinenet}.{fusion_parts[match[2]]}.{match[3]}"] = value
        elif match := re.match(r"^(head\.conv\d)\.(weight|bias)$", key):
            out[f"{head[match[1]]}.{match[2]}"] = value
        else:
            raise ConfigError(f"unexpected key '{key}' in a Hugging Face Depth Anything state dict")
    for (index, kind), parts in qkv.items():
        out[f"pretrained.blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
