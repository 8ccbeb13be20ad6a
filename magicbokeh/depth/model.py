"""Depth-Anything-V2 network (DINOv2 ViT encoder + DPT head): build by size, load local weights, predict disparity.

We use transformers' ``DepthAnythingForDepthEstimation`` rather than timm + our own head: it *is* the DA-V2
architecture (the HF ports were checked against the release's outputs), it loads the HF folders directly, its
backbone exposes the normalised intermediate layers that feed the DPT head (what feature distillation needs), and it
supports SDPA attention and gradient checkpointing. We only add what it lacks: presets by size, loading of the
original ``.pth`` layout (:mod:`magicbokeh.depth.convert`), the release's preprocessing, and the [0, 1] contract.

``preprocessing="release"`` reproduces the release's depth step where it differs from ours: the photo's 8-bit levels
/255 in float64 are resized by OpenCV's bicubic (which differs from torch's by up to 5e-5) and not clamped to [0, 1]
(bicubic overshoots at edges), normalised in float64; DINOv2's position embeddings are resized by a scale factor
``(n + 0.1)/N`` (n patches along the side, N along the pretrained grid, 37 at 518 px) as the original DINOv2 code
does, where transformers resizes them to the exact ``n`` (both sample the same grid only when n = N); and the
min-max normalisation divides by ``max − min + 1e-8``. It is for inference: the OpenCV resize runs on the CPU and
passes no gradient.

The network predicts affine-invariant *disparity* (larger = nearer), so no inversion is needed for DESIGN §3.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

from magicbokeh.depth.convert import to_hf_state_dict
from magicbokeh.errors import ConfigError, InvalidInputError, missing_weights
from magicbokeh.utils.files import atomic_path, atomic_write_text
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

DepthSize = Literal["tiny", "small", "base", "large"]

# ImageNet statistics the DINOv2 encoder was trained with (the release normalises with them too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The release runs at a short side of 518 px (37 patches of 14 px).
DEFAULT_INPUT_SIZE = 518
WEIGHTS_SOURCE = (
    "the Depth-Anything-V2 release (github.com/DepthAnything/Depth-Anything-V2, .pth) or the Hugging Face folders "
    "depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf"
)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class _Preset:
    hidden_size: int
    num_layers: int
    num_heads: int
    # 1-based indices of the transformer blocks whose (layer-normed) outputs feed the DPT head; the release
    # lists them 0-based as intermediate_layer_idx ({vits,vitb}: 2,5,8,11; vitl: 4,11,17,23).
    out_indices: tuple[int, ...]
    fusion_hidden_size: int
    neck_hidden_sizes: tuple[int, ...]
    head_hidden_size: int = 32
    image_size: int = DEFAULT_INPUT_SIZE


PRESETS: dict[str, _Preset] = {
    # Test/smoke network: same topology, a few thousand parameters per block.
    "tiny": _Preset(32, 4, 2, (1, 2, 3, 4), 16, (8, 16, 32, 32), head_hidden_size=8, image_size=112),
    "small": _Preset(384, 12, 6, (3, 6, 9, 12), 64, (48, 96, 192, 384)),
    "base": _Preset(768, 12, 12, (3, 6, 9, 12), 128, (96, 192, 384, 768)),
    "large": _Preset(1024, 24, 16, (5, 12, 18, 24), 256, (256, 512, 1024, 1024)),
}


def depth_anything_config(size: str) -> DepthAnythingConfig:
    """The HF config of a Depth-Anything-V2 network of the given size (relative-disparity head)."""
    if size not in PRESETS:
        raise ConfigError(f"unknown depth model size '{size}'; choose one of {sorted(PRESETS)}")
    preset = PRESETS[size]
    backbone = Dinov2Config(
        hidden_size=preset.hidden_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        image_size=preset.image_size,
        patch_size=14,
        out_indices=list(preset.out_indices),
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=preset.hidden_size,
        patch_size=14,
        fusion_hidden_size=preset.fusion_hidden_size,
        neck_hidden_sizes=list(preset.neck_hidden_sizes),
        head_hidden_size=preset.head_hidden_size,
        depth_estimation_type="relative",
    )


PREPROCESSINGS = ("default", "release")


class ScaleFactorPositionEmbeddings(Dinov2Embeddings):
    """DINOv2 embeddings whose position table is resized by a scale factor, as the original DINOv2 code does.

    For an image of ``n_h × n_w`` patches and a pretrained ``N × N`` table, the patch part of the table is resized
    bicubically (float32, no antialiasing) with ``scale_factor = ((n_h + 0.1)/N, (n_w + 0.1)/N)``. PyTorch then maps
    output row ``i`` to source row ``(i + ½)·N/(n_h + 0.1) − ½`` instead of transformers' ``(i + ½)·N/n_h − ½``;
    the 0.1 makes the output size come out as ``n`` despite floating-point rounding. A square image of exactly the
    pretrained grid uses the table as it is (both versions agree there).
    """

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        num_positions = self.position_embeddings.shape[1] - 1
        patch_height, patch_width = self.patch_embeddings.patch_size
        rows, cols = height // patch_height, width // patch_width
        if embeddings.shape[1] - 1 == num_positions and height == width:
            return self.position_embeddings
        grid = math.isqrt(num_positions)
        table = self.position_embeddings[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(
            table.float(),
            scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid),
            mode="bicubic",
            align_corners=False,
        )
        patches = resized.to(self.position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat((self.position_embeddings[:, :1], patches), dim=1)


@dataclass
class DepthForward:
    """One forward pass: raw (unnormalised) disparity at the network resolution and the encoder features."""

    disparity: torch.Tensor  # B×1×h×w, ≥ 0, arbitrary scale and shift
    features: tuple[torch.Tensor, ...]  # per out_index: B×(1+N)×C tokens (class token first), layer-normed


class DepthModel(nn.Module):
    """A Depth-Anything-V2 network with the release's preprocessing and the [0, 1] disparity contract.

    Args:
        network: the HF network.
        input_size: short side (px) the image is resized to before the network (the release uses 518); ``None``
            keeps the input size, only rounding it up to a multiple of the patch size.
        preprocessing: ``"default"`` or ``"release"`` (module docstring); :meth:`set_preprocessing` switches it.
    """

    def __init__(
        self,
        network: DepthAnythingForDepthEstimation,
        input_size: int | None = DEFAULT_INPUT_SIZE,
        preprocessing: str = "default",
    ):
        super().__init__()
        if input_size is not None and input_size < network.config.patch_size:
            raise ConfigError(
                f"depth input_size {input_size} is smaller than the patch size {network.config.patch_size}"
            )
        self.network = network
        self.input_size = input_size
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.set_preprocessing(preprocessing)

    def set_preprocessing(self, preprocessing: str) -> None:
        """Switch between our preprocessing and the release's (module docstring); the weights stay as they are."""
        if preprocessing not in PREPROCESSINGS:
            raise ConfigError(f"depth preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
        self.preprocessing = preprocessing
        # The override only changes how the position table is resized, so swapping the class of the existing
        # module keeps its parameters and state dict untouched.
        embeddings = self.network.backbone.embeddings
        embeddings.__class__ = ScaleFactorPositionEmbeddings if preprocessing == "release" else Dinov2Embeddings

    @property
    def patch_size(self) -> int:
        return int(self.network.config.patch_size)

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input size for an ``height×width`` image: aspect ratio kept, short side ≥ ``input_size``,
        both sides rounded to the nearest multiple of the patch size (never below the short-side target)."""
        p = self.patch_size
        if self.input_size is None:
            return math.ceil(height / p) * p, math.ceil(width / p) * p
        scale = self.input_size / min(height, width)
        floor = math.ceil(self.input_size / p)

        def side(length: int) -> int:
            return max(round(length * scale / p), floor) * p

        return side(height), side(width)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` [0, 1] images → ImageNet-normalised network input at :meth:`network_size`."""
        _check_images(images)
        param = next(self.network.parameters())
        size = self.network_size(*images.shape[-2:])
        if self.preprocessing == "release":
            return self._release_input(images, size).to(device=param.device, dtype=param.dtype)
        images = images.to(device=param.device, dtype=param.dtype)
        if size != tuple(images.shape[-2:]):
            # Bicubic like the release's cv2.INTER_CUBIC, clamped because bicubic overshoots.
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False).clamp(0.0, 1.0)
        return (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)

    @staticmethod
    def _release_input(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The release's input step (module docstring), image by image on the CPU, as float32 ``B×3×h×w``."""
        mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
        prepared = []
        for image in images.detach().float().cpu():
            levels = image.mul(255.0).round_().permute(1, 2, 0).numpy().astype(np.float64) / 255.0
            if size != tuple(levels.shape[:2]):
                levels = cv2.resize(levels, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
            prepared.append(torch.from_numpy(((levels - mean) / std).transpose(2, 0, 1).astype(np.float32)))
        return torch.stack(prepared)

    def forward(self, images: torch.Tensor) -> DepthForward:
        """Raw disparity (network resolution) and encoder features; differentiable (used by distillation)."""
        pixel_values = self.prepare(images)
        backbone_out = self.network.backbone(pixel_values)
        features = tuple(backbone_out.feature_maps)
        patch_h, patch_w = (s // self.patch_size for s in pixel_values.shape[-2:])
        fused = self.network.neck(list(features), patch_h, patch_w)
        disparity = self.network.head(fused, patch_h, patch_w)
        return DepthForward(disparity=disparity.unsqueeze(1), features=features)

    @torch.no_grad()
    def predict_disparity(self, images: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` [0, 1] images → ``B×1×H×W`` disparity in [0, 1] (1 = nearest) at the input resolution,
        float32 on the images' device; min-max normalised per image (a constant map becomes all zeros)."""
        height, width = images.shape[-2:]
        raw = self(images).disparity.float()
        raw = F.interpolate(raw, size=(height, width), mode="bilinear", align_corners=True)
        if self.preprocessing == "release":
            flat = raw.flatten(1)
            low = flat.min(dim=1).values.view(-1, 1, 1, 1)
            high = flat.max(dim=1).values.view(-1, 1, 1, 1)
            return ((raw - low) / (high - low + 1e-8)).to(images.device)
        return minmax_normalize(raw).to(images.device)

    def save(self, folder: str | Path) -> Path:
        """Write ``config.json`` (HF config + our ``input_size``, for reference) and ``model.safetensors`` (HF
        layout), each atomically so an interrupted save never leaves a truncated file behind."""
        folder = Path(folder)
        state = {k: v.detach().contiguous().cpu() for k, v in self.network.state_dict().items()}
        with atomic_path(folder / WEIGHTS_FILE) as temp_path:
            save_file(state, str(temp_path))
        config = self.network.config.to_dict()
        config["magicbokeh_input_size"] = self.input_size
        atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2))
        return folder


def minmax_normalize(disparity: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Map each ``B×1×H×W`` map to [0, 1]: (d − min) / (max − min); constant maps become 0."""
    flat = disparity.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return ((disparity - low) / (high - low).clamp_min(eps)).clamp(0.0, 1.0)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidInputError(f"depth model expects images of shape B×3×H×W in [0, 1], got {shape}")
    if not torch.isfinite(images).all():
        raise InvalidInputError("depth model input contains NaN or Inf")


def _read_state_dict(path: Path) -> dict:
    """Load a weights file as a dict of tensors (safetensors, or torch.load with weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any decoder error means the same thing to the user: not a weights file
        raise ConfigError(
            f"cannot read depth weights '{path}' as a safetensors or PyTorch weights file ({type(error).__name__}: "
            f"{str(error)[:200]})"
        ) from error


def _weights_in_folder(folder: Path) -> dict:
    """Weights of an HF-style folder: one safetensors, a sharded safetensors index, or pytorch_model.bin."""
    single = folder / WEIGHTS_FILE
    if single.is_file():
        return _read_state_dict(single)
    index = folder / f"{WEIGHTS_FILE}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict = {}
        for shard in shards:
            state.update(_read_state_dict(folder / shard))
        return state
    for name in ("pytorch_model.bin", "model.pth"):
        if (folder / name).is_file():
            return _read_state_dict(folder / name)
    candidates = sorted(p.name for p in folder.glob("*.pth")) + sorted(p.name for p in folder.glob("*.safetensors"))
    if len(candidates) == 1:
        return _read_state_dict(folder / candidates[0])
    raise ConfigError(
        f"depth weights folder '{folder}' holds no {WEIGHTS_FILE}, sharded index, pytorch_model.bin or single .pth "
        f"file (found: {candidates or 'nothing'})"
    )


def load_depth_weights(network: DepthAnythingForDepthEstimation, path: str | Path, config_key: str) -> None:
    """Load weights in any supported layout into ``network``; clear errors for a missing or mismatching file."""
    path = Path(path)
    if not path.exists():
        raise missing_weights(str(path), config_key, WEIGHTS_SOURCE)
    checkpoint = _weights_in_folder(path) if path.is_dir() else _read_state_dict(path)
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"depth weights '{path}' hold a {type(checkpoint).__name__}, not a state dict")
    try:
        state_dict = to_hf_state_dict(checkpoint)
    except ConfigError as error:
        raise ConfigError(f"depth weights '{path}': {error}") from error
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        details = []
        if wrong_shape:
            k = wrong_shape[0]
            details.append(
                f"{len(wrong_shape)} shape mismatch(es), e.g. '{k}' is {tuple(state_dict[k].shape)} in the file but "
                f"{tuple(expected[k].shape)} in the network"
            )
        if missing:
            details.append(f"{len(missing)} missing key(s), e.g. {missing[:2]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:2]}")
        raise ConfigError(
            f"depth weights '{path}' do not fit the configured network ({'; '.join(details)}). Check that the "
            f"depth size matches the file (small = ViT-S, base = ViT-B, large = ViT-L)"
        )
    network.load_state_dict(state_dict, strict=True)


def build_depth_model(
    size: DepthSize = "large",
    weights: str | Path | None = None,
    *,
    input_size: int | None = DEFAULT_INPUT_SIZE,
    preprocessing: str = "default",
    config_key: str = "depth.weights",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> DepthModel:
    """Build a Depth-Anything-V2 network of ``size`` and load ``weights`` (``None``: random init, tests only).

    Args:
        size: ``tiny`` (tests and smoke runs), ``small`` (ViT-S), ``base`` (ViT-B) or ``large`` (ViT-L, MagicBokeh).
        weights: an original-release ``.pth`` (also ``DAdepth.pth``), a ``.safetensors`` file in either layout, or
            a folder with ``model.safetensors`` (HF hub folder, or one written by :meth:`DepthModel.save`).
        input_size: see :class:`DepthModel`; ``None`` keeps the image size. A folder written by
            :meth:`DepthModel.save` does not override it.
        preprocessing: ``"default"`` or ``"release"`` (see :class:`DepthModel`).
        config_key: the config key that set ``weights``, quoted in the missing-file error.
        device, dtype: where to put the network (caller's choice; nothing is assumed).
        attn_implementation: ``"sdpa"`` or ``"eager"``.
    """
    if weights is not None and not Path(weights).exists():  # fail before spending time on building the network
        raise missing_weights(str(weights), config_key, WEIGHTS_SOURCE)
    config = depth_anything_config(size)
    # Only the DINOv2 encoder has attention (the DPT head is convolutional), so only its config takes the switch.
    config.backbone_config._attn_implementation = attn_implementation
    network = DepthAnythingForDepthEstimation(config)
    if weights is not None:
        load_depth_weights(network, weights, config_key)
        logger.info("loaded %s depth weights from %s", size, weights)
    else:
        # HF initialises the DPT convolutions with N(0, 0.02), which shrinks the signal at every layer: a random
        # network then predicts ~1e-7 everywhere and its final ReLU starts dead. The release trains the head from
        # PyTorch's default (Kaiming-uniform) conv init; use that so a random network (tests, the smoke teacher)
        # produces structured output.
        for module in (*network.neck.modules(), *network.head.modules()):
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                module.reset_parameters()
        logger.info("built a randomly initialised %s depth network (no weights given)", size)
    model = DepthModel(network, input_size=input_size, preprocessing=preprocessing)
    model.eval()
    model.to(device=device, dtype=dtype)
    return model
