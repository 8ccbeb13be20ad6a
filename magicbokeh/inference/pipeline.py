"""The any-size MagicBokeh pipeline: LQ photo → upsampled, super-resolved photo with controllable bokeh.

Steps for one image (DESIGN §1 "inference", REFERENCE §1.7):

1. upsample the LQ input by ``scale`` (bicubic, no antialiasing when enlarging, clamped: bicubic overshoots);
2. disparity: given by the caller (at input or output size), or estimated by the depth model on the LQ input and
   upsampled bilinearly;
3. focus disparity d_f from a value, a clicked point, a subject mask or automatically
   (:mod:`magicbokeh.depth.focus`), on the input-resolution disparity;
4. ``defocus = |d − d_f| · K/32`` at the output size (:func:`~magicbokeh.optics.defocus_map`);
5. the network tile by tile (:func:`~magicbokeh.inference.tiling.run_tiled`), so device memory depends on the tile
   size only; the image, maps and the blending accumulator live on the CPU in float32;
6. colour fix against the upsampled input (:mod:`magicbokeh.inference.color_fix`).

``preset`` (:mod:`magicbokeh.inference.presets`) decides the details: ``"default"`` is ours; ``"release"`` follows
the official inference step for step (8-bit disparity and output, its tile weights, its focus rules, scale 1, K 32,
images of at least 512 × 512).

Precision: ``"auto"`` is fp16 on a GPU and fp32 on the CPU. ``precision`` sets the network's weights and
arithmetic only: tiles reach the network in float32 (it casts them itself, after its own range conversions), so the
defocus map and its in-focus threshold, the tile accumulator and the colour-fix statistics stay float32 whatever the
network precision. bf16 is allowed on the CPU (native on CPUs with AMX/AVX512-BF16, emulated and slower than fp32
elsewhere; it lets reduced-precision numerics be checked without a GPU); fp16 needs a GPU.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from magicbokeh.data.transforms import upsample
from magicbokeh.depth.focus import focus_at_pixel, focus_auto, focus_from_mask, focus_from_point
from magicbokeh.errors import ConfigError, InvalidInputError, ParameterError
from magicbokeh.inference.color_fix import COLOR_FIX_METHODS, color_fix, release_color_fix, truncate_8bit
from magicbokeh.inference.presets import PRESETS, InferencePreset, get_preset
from magicbokeh.inference.tiling import check_tiling, run_tiled
from magicbokeh.optics.coc import check_K
from magicbokeh.optics.defocus import defocus_map
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

Focus = float | Sequence[float] | str
"""A focus disparity in [0, 1], an ``(x, y)`` point in input pixels, or ``"auto"``."""

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto|fp32|fp16|bf16`` → dtype: auto is fp16 on CUDA and fp32 elsewhere; fp16 needs a GPU."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in PRECISIONS:
        raise ParameterError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype == torch.float16 and device.type == "cpu":
        raise ParameterError(f"precision={precision} needs a GPU; on the CPU use precision=fp32 (or auto, or bf16)")
    return dtype


def merge_lora_adapters(model: object) -> int:
    """Fold LoRA adapters into their base weights, ``W ← W + (α/r)·B·A``, for faster inference; returns the count.

    Uses the model's own ``merge_lora()`` when it has one; otherwise merges every peft ``LoraLayer`` (the SR and
    VAE-encoder adapters). FAMA's bokeh branch is not a weight delta (it attends with its own masked softmax), so
    it stays as it is. Inference only: merged weights can no longer be trained or saved as adapters.
    """
    own = getattr(model, "merge_lora", None)
    if callable(own):
        own()
        logger.info("LoRA adapters merged by %s.merge_lora()", type(model).__name__)
        return -1
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)] if isinstance(model, torch.nn.Module) else []
    for layer in layers:
        layer.merge()
    if layers:
        logger.info("merged %d peft LoRA layers into their base weights", len(layers))
    else:
        logger.warning("merge_lora requested but %s has no LoRA layers; running as is", type(model).__name__)
    return len(layers)


def _model_device(model: object) -> torch.device:
    parameters = getattr(model, "parameters", None)
    if parameters is not None:
        for parameter in parameters():
            return parameter.device
    return torch.device("cpu")


def _as_map(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """``H×W``, ``1×H×W`` or ``1×1×H×W`` → ``1×1×H×W`` float32 CPU."""
    if not isinstance(tensor, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    while tensor.ndim < 4:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[:2] != (1, 1):
        raise InvalidInputError(f"{name} must be H×W, 1×H×W or 1×1×H×W, got shape {tuple(tensor.shape)}")
    return tensor.detach().float().cpu()


def _size_text(size: Sequence[int]) -> str:
    return f"{size[1]}×{size[0]} (W×H)"


@dataclass
class Prepared:
    """What one image needs before the network runs; shared by every frame of a sweep."""

    images: torch.Tensor  # 1×3×H×W, the LQ input
    upsampled: torch.Tensor  # 1×3×sH×sW, the network input and the colour-fix reference
    disparity: torch.Tensor  # 1×1×H×W at the input size (focus selection)
    disparity_out: torch.Tensor  # 1×1×sH×sW at the output size (defocus map)
    scale: float


@dataclass
class PipelineOutput:
    image: torch.Tensor  # 1×3×sH×sW in [0, 1]
    disparity: torch.Tensor  # 1×1×sH×sW
    defocus: torch.Tensor  # 1×1×sH×sW
    focus_disparity: float


class BokehPipeline(abc.ABC):
    """What every renderer shares: input checks, upsampling, disparity, focus, and the per-image loop.

    Subclasses implement :meth:`render` (one prepared image, one focus disparity, one K → :class:`PipelineOutput`).

    Args:
        depth_model: anything with ``predict_disparity(images) -> B×1×H×W`` in [0, 1]; only needed when no
            disparity is passed.
        saliency_model: optional subject detector for ``focus="auto"`` (see :func:`magicbokeh.depth.focus.focus_auto`).
        preset: the steps around the renderer (:mod:`magicbokeh.inference.presets`); K and scale default to its.
    """

    def __init__(
        self,
        depth_model: object | None = None,
        saliency_model: Callable | None = None,
        preset: InferencePreset = PRESETS["default"],
    ):
        self.depth_model = depth_model
        self.saliency_model = saliency_model
        self.preset = preset

    @property
    def default_K(self) -> float:
        """K used when a call gives none (the preset's: 16 ours, 32 the release's)."""
        return self.preset.K

    @property
    def default_scale(self) -> float:
        """Output scale used when a call gives none (the preset's: 4 ours, 1 the release's)."""
        return self.preset.scale

    @abc.abstractmethod
    def render(self, prepared: Prepared, focus_disparity: float, K: float) -> PipelineOutput:
        """One prepared image at focus disparity ``focus_disparity`` and strength ``K``."""

    # ----------------------------------------------------------------------------------------------------------------
    def __call__(
        self,
        image: torch.Tensor,
        focus: Focus = "auto",
        K: float | None = None,
        scale: float | None = None,
        disparity: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``3×H×W`` or ``B×3×H×W`` LQ image(s) in [0, 1] → ``B×3×sH×sW`` (same rank as given).

        ``disparity`` and ``mask`` (nonzero = subject; used for the focus) are at the input or the output size, for
        one image. With a mask, ``focus`` is ignored. ``K`` and ``scale`` default to :attr:`default_K` and
        :attr:`default_scale`.
        """
        single = isinstance(image, torch.Tensor) and image.ndim == 3
        batch = image[None] if single else image
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
            raise InvalidInputError(f"image must be 3×H×W or B×3×H×W, got {getattr(image, 'shape', type(image))}")
        if batch.shape[0] > 1 and (disparity is not None or mask is not None):
            raise InvalidInputError("disparity and mask describe one image; call the pipeline once per image")
        outputs = [
            self.run(batch[i : i + 1], focus=focus, K=K, scale=scale, disparity=disparity, mask=mask).image
            for i in range(batch.shape[0])
        ]
        result = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        return result[0] if single else result

    def run(
        self,
        image: torch.Tensor,
        focus: Focus = "auto",
        K: float | None = None,
        scale: float | None = None,
        disparity: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> PipelineOutput:
        """One image: the output plus the maps it was made from (``save_maps`` in the CLI)."""
        prepared = self.prepare(image, scale=scale, disparity=disparity)
        focus_disparity = self.focus_disparity(prepared, focus=focus, mask=mask)
        return self.render(prepared, focus_disparity, self.default_K if K is None else K)

    # ----------------------------------------------------------------------------------------------------------------
    def prepare(
        self, image: torch.Tensor, scale: float | None = None, disparity: torch.Tensor | None = None
    ) -> Prepared:
        """Validate, upsample, and get the disparity (given or estimated) at the input and output sizes."""
        scale = self.default_scale if scale is None else scale
        images = image[None] if image.ndim == 3 else image
        if images.ndim != 4 or images.shape[:2] != (1, 3):
            raise InvalidInputError(f"image must be 3×H×W or 1×3×H×W RGB, got shape {tuple(image.shape)}")
        images = images.detach().float().cpu()
        if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise InvalidInputError("image must be finite with values in [0, 1]")
        upsampled = upsample(images, scale)
        in_size, out_size = tuple(images.shape[-2:]), tuple(upsampled.shape[-2:])
        if min(out_size) < self.preset.min_size:
            raise InvalidInputError(
                f"preset={self.preset.name} needs an output of at least {self.preset.min_size}×{self.preset.min_size} "
                f"(it tiles {self.preset.tile_size}-px squares and pads nothing), got {_size_text(out_size)}; use "
                "preset=default for smaller images"
            )
        if disparity is None:
            disparity_in = self.estimate_disparity(images)
            disparity_out = None
        else:
            given = _as_map(disparity, "disparity")
            if tuple(given.shape[-2:]) == in_size:
                disparity_in, disparity_out = given, None
            elif tuple(given.shape[-2:]) == out_size:
                disparity_out = given
                disparity_in = F.interpolate(given, size=in_size, mode="bilinear", align_corners=False, antialias=True)
            else:
                raise InvalidInputError(
                    f"disparity of size {_size_text(given.shape[-2:])} matches neither the input "
                    f"{_size_text(in_size)} nor the output {_size_text(out_size)}; resize it to the input"
                )
        if disparity_out is None:
            disparity_out = (
                disparity_in
                if in_size == out_size
                else F.interpolate(disparity_in, size=out_size, mode="bilinear", align_corners=False)
            )
        # Bilinear resampling is a convex combination, so the maps stay in [0, 1] without a clamp (and a copy).
        if self.preset.disparity_8bit:
            # The release stores disparity as 8-bit levels (uint8 of 255·d) and computes focus and defocus from them.
            disparity_in = truncate_8bit(disparity_in)
            disparity_out = disparity_in if disparity_out.shape == disparity_in.shape else truncate_8bit(disparity_out)
        return Prepared(images, upsampled, disparity_in, disparity_out, float(scale))

    def estimate_disparity(self, images: torch.Tensor) -> torch.Tensor:
        """Disparity of ``1×3×H×W`` LQ images with the depth model (it was trained on degraded inputs)."""
        if self.depth_model is None:
            raise ConfigError(
                "no disparity for this image and no depth model: pass disparity= (a 1×H×W map in [0, 1], 1 = nearest; "
                "CLI: disparity=FILE_OR_FOLDER) or configure the depth model weights (CLI: depth_model.weights=PATH, "
                "default ${paths.da_depth})"
            )
        preprocessing = getattr(self.depth_model, "preprocessing", None)
        if preprocessing is not None and preprocessing != self.preset.depth_preprocessing:
            logger.warning(
                "the depth model uses %s preprocessing but preset=%s expects %s (build_depth_model(preprocessing=...))",
                preprocessing, self.preset.name, self.preset.depth_preprocessing,
            )  # fmt: skip
        with torch.inference_mode():
            disparity = self.depth_model.predict_disparity(images)
        return _as_map(disparity.float().cpu(), "estimated disparity")

    def focus_disparity(self, prepared: Prepared, focus: Focus = "auto", mask: torch.Tensor | None = None) -> float:
        """d_f from a subject mask (input or output size), a point ``(x, y)`` in input pixels, a value, or auto.

        The preset's focus rules decide the median of a mask (numpy's, or the release's lower middle value) and the
        click (a robust surface median, or the release's single pixel).
        """
        release_rules = self.preset.focus_rules == "release"
        if mask is not None:
            mask_map = _as_map(mask, "mask")
            size = tuple(mask_map.shape[-2:])
            if size == tuple(prepared.disparity.shape[-2:]):
                return float(focus_from_mask(prepared.disparity, mask_map, lower_median=release_rules))
            if size == tuple(prepared.disparity_out.shape[-2:]):
                return float(focus_from_mask(prepared.disparity_out, mask_map, lower_median=release_rules))
            raise InvalidInputError(
                f"mask of size {_size_text(size)} matches neither the input {_size_text(prepared.disparity.shape[-2:])}"
                f" nor the output {_size_text(prepared.disparity_out.shape[-2:])}; resize the mask to the input image"
            )
        if isinstance(focus, str):
            if focus != "auto":
                raise ParameterError(f"focus must be a disparity in [0, 1], an (x, y) point or 'auto', got {focus!r}")
            return float(focus_auto(prepared.disparity, prepared.images, self.saliency_model))
        if isinstance(focus, int | float):
            if not 0.0 <= float(focus) <= 1.0:
                raise ParameterError(f"focus value is a disparity and must be in [0, 1], got {focus}")
            return float(focus)
        point = [float(v) for v in focus]
        if len(point) != 2:
            raise ParameterError(f"focus point must be (x, y) in input pixels, got {focus!r}")
        if release_rules:
            return float(focus_at_pixel(prepared.disparity, point))
        return float(focus_from_point(prepared.disparity, point))


class MagicBokehPipeline(BokehPipeline):
    """Tiled, any-size inference around a MagicBokeh network.

    Args:
        model: ``model(lq_images B×3×h×w [0, 1], defocus B×1×h×w) -> images``; its ``stride`` attribute (default
            1) is the multiple the tile must be. Inputs arrive in float32 whatever ``precision`` (the model casts
            them to its own dtype, as :class:`~magicbokeh.models.MagicBokehModel` does).
        depth_model, saliency_model: see :class:`BokehPipeline`.
        preset: ``"default"`` (ours) or ``"release"`` (the official inference exactly; it fixes the tiling and the
            colour fix to the release's 512/256/adain, so other values are an error), or an
            :class:`~magicbokeh.inference.presets.InferencePreset`.
        tile_size, tile_stride: tiling (official 512/256); ``tile_stride=None`` is half the tile; ``tile_size=None``
            runs the whole image at once. Images that fit in a tile run as one piece padded to the model stride.
        color_fix: ``adain`` (default), ``wavelet`` or ``none``.
        tile_batch_size: tiles per network call (memory vs. throughput).
        device: where the network runs (default: where its parameters are).
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16``.
        merge_lora: fold the peft LoRA adapters into the base weights once (faster; see :func:`merge_lora_adapters`).
        pad_small_to_tile: mirror-pad an image side shorter than a tile up to the whole tile, as the pipeline used
            to (the baseline of ``scripts/benchmark.py inference``; it costs up to (tile/side)² more compute).
        progress: tqdm bar over tiles.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        depth_model: object | None = None,
        *,
        preset: str | InferencePreset = "default",
        tile_size: int | None = 512,
        tile_stride: int | None = None,
        color_fix: str = "adain",
        tile_batch_size: int = 1,
        device: torch.device | str | None = None,
        precision: str = "auto",
        merge_lora: bool = False,
        saliency_model: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pad_small_to_tile: bool = False,
        progress: bool = True,
    ):
        settings = get_preset(preset)
        super().__init__(depth_model, saliency_model, settings)
        if color_fix not in COLOR_FIX_METHODS:
            raise ParameterError(f"color_fix must be one of {COLOR_FIX_METHODS}, got {color_fix!r}")
        if tile_batch_size < 1:
            raise ParameterError(f"tile batch size must be ≥ 1, got {tile_batch_size}")
        if tile_size is not None and tile_stride is None and isinstance(tile_size, int):
            tile_stride = max(tile_size // 2, 1)
        if settings.name == "release":
            fixed = (settings.tile_size, settings.tile_stride, settings.color_fix)
            if (tile_size, tile_stride, color_fix) != fixed:
                raise ParameterError(
                    f"preset=release fixes tile.size={fixed[0]}, tile.stride={fixed[1]} and color_fix={fixed[2]} "
                    f"(the release's), got {tile_size}/{tile_stride}/{color_fix}; drop the override or use "
                    "preset=default"
                )
        self.model_stride = int(getattr(model, "stride", 1))
        check_tiling(tile_size, tile_stride, self.model_stride)
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.dtype = resolve_dtype(precision, self.device)
        if merge_lora:
            merge_lora_adapters(model)  # before the dtype cast: W + s·BA is summed in the checkpoint's precision
        if isinstance(model, torch.nn.Module):
            model = model.to(device=self.device, dtype=self.dtype).eval()
        self.model = model
        self.tile_size, self.tile_stride = tile_size, tile_stride
        self.color_fix = color_fix
        self.tile_batch_size = tile_batch_size
        self.pad_small_to_tile = pad_small_to_tile
        self.progress = progress

    def render(self, prepared: Prepared, focus_disparity: float, K: float) -> PipelineOutput:
        """Network over tiles + colour fix for one focus disparity and strength K."""
        check_K(K)
        defocus = defocus_map(prepared.disparity_out, focus_disparity, K)

        def network(images: torch.Tensor, defocus_tile: torch.Tensor) -> torch.Tensor:
            return self.model(images, defocus_tile)

        with torch.inference_mode():
            output = run_tiled(
                network,
                [prepared.upsampled, defocus],
                out_channels=3,
                tile_size=self.tile_size,
                tile_stride=self.tile_stride,
                model_stride=self.model_stride,
                tile_batch_size=self.tile_batch_size,
                device=self.device,
                # float32 tiles whatever the network precision: the model casts its inputs after converting their
                # range, and the in-focus threshold (defocus ≤ 0.1) is decided on float32 values (in bf16, 0.1002
                # rounds to 0.1001 = bf16(0.1) and flips a whole out-of-focus plateau into focus).
                dtype=torch.float32,
                blend=self.preset.blend,
                pad_to_tile=self.pad_small_to_tile,
                progress=self.progress,
            )
            # In place: the accumulator is ours, and a second image-sized buffer is what a 48 MP photo cannot afford.
            output.clamp_(0.0, 1.0)
            if self.preset.output_8bit:
                output = release_color_fix(output, prepared.upsampled, inplace=True)
            else:
                output = color_fix(output, prepared.upsampled, self.color_fix, inplace=True)
        return PipelineOutput(output, prepared.disparity_out, defocus, float(focus_disparity))
