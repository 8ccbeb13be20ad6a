"""Training datasets for bokeh rendering, super-resolution and depth distillation.

**One sample contract** for every bokeh and SR dataset (tensors are float32; collate with the default collate)::

    lq               3×H×W [0, 1]  degraded all-in-focus input at the target size (clean when degradation is None)
    hq               3×H×W [0, 1]  the clean all-in-focus image at the target size, before degradation (for SR:
                                   the target itself); what a depth model sees for the teacher_hq condition
    target           3×H×W [0, 1]  ground truth: rendered or photographed bokeh, or the HQ crop for SR
    task             "bokeh" | "sr"
    disparity        1×H×W [0, 1]  clean disparity, 1 = nearest (zeros for SR; zeros when a photo has none)
    focus_disparity  0-d tensor    focal plane, in disparity units (0 for SR)
    K                0-d tensor    blur strength in [0, 32] (0 for SR)
    defocus          1×H×W [0, 1]  |d − d_f|·K/32 = optics.defocus_map (zeros for SR: pure super-resolution)
    meta             dict          index, dataset, source (file or "synthetic"), has_disparity, focus_rule

:class:`DepthDistillDataset` returns ``{"clean": 3×H×W, "degraded": 3×H×W, "meta": {...}}`` instead (plus the exact
``disparity`` for synthetic scenes).

**Reproducibility.** Sample ``i`` draws everything (crop, flip, focus, K, scene, degradation) from
``sample_generator(seed, i)``, so it is identical whatever the worker, the order or the process. ``length`` may exceed
the number of files: index ``i`` then reads file ``i mod n`` with a fresh crop and degradation (virtual epochs).

**Errors.** Folders are scanned at construction: a photo without its disparity map is a :class:`DatasetError`
naming the photo; at read time a corrupt file raises :class:`ImageReadError` naming it, and maps whose size differs
from their photo raise :class:`DatasetError` naming both files.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from magicbokeh.data.io import DISPARITY_EXTENSIONS, IMAGE_EXTENSIONS, list_images, read_disparity, read_image
from magicbokeh.data.synthetic import SyntheticSceneGenerator, render_scene
from magicbokeh.data.transforms import ensure_min_size, random_crop, random_hflip
from magicbokeh.errors import ConfigError, DatasetError, ParameterError
from magicbokeh.optics.coc import K_MAX
from magicbokeh.optics.defocus import defocus_map
from magicbokeh.optics.render import DEFAULT_NUM_LAYERS, BokehRenderer
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.seeding import sample_generator

logger = get_logger(__name__)

FOCUS_RULES = ("subject", "random", "mixed")


# --------------------------------------------------------------------------------------------------------------------
# The sample contract
# --------------------------------------------------------------------------------------------------------------------
def bokeh_sample(
    lq: torch.Tensor,
    target: torch.Tensor,
    disparity: torch.Tensor,
    focus_disparity: float,
    K: float,
    meta: dict,
    *,
    hq: torch.Tensor,
    has_disparity: bool = True,
) -> dict:
    """Assemble a ``task="bokeh"`` sample (``hq``: the clean all-in-focus image the ``lq`` was degraded from); the
    defocus map comes from the one formula in ``optics.defocus``."""
    defocus = defocus_map(disparity[None], focus_disparity, K)[0] if has_disparity else torch.zeros_like(disparity)
    return {
        "lq": lq.float(),
        "hq": hq.float(),
        "target": target.float(),
        "task": "bokeh",
        "disparity": disparity.float(),
        "focus_disparity": torch.tensor(float(focus_disparity), dtype=torch.float32),
        "K": torch.tensor(float(K), dtype=torch.float32),
        "defocus": defocus.float(),
        "meta": {**meta, "has_disparity": has_disparity},
    }


def sr_sample(lq: torch.Tensor, target: torch.Tensor, meta: dict) -> dict:
    """Assemble a ``task="sr"`` sample: zero disparity, K = 0, all-zero defocus (pure super-resolution); the clean
    ``hq`` image is the target."""
    zeros = torch.zeros(1, *target.shape[-2:], dtype=torch.float32)
    return {
        "lq": lq.float(),
        "hq": target.float(),
        "target": target.float(),
        "task": "sr",
        "disparity": zeros,
        "focus_disparity": torch.tensor(0.0),
        "K": torch.tensor(0.0),
        "defocus": zeros.clone(),
        "meta": {**meta, "has_disparity": False, "focus_rule": "none"},
    }


# --------------------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------------------
def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _check_range(values: Sequence[float], low: float, high: float, name: str) -> tuple[float, float]:
    pair = tuple(float(v) for v in values)
    if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
        raise ParameterError(f"{name} must be [a, b] with {low} ≤ a ≤ b ≤ {high}, got {list(values)}")
    return pair


class _FocusAndStrength:
    """Draws (focus_disparity, K, rule) for a bokeh sample.

    ``subject``: the median disparity inside the subject mask (the inference rule, DESIGN §1); ``random``: the
    disparity of a uniformly drawn pixel (focus anywhere in the scene, the criticism of EBB400's foreground-only
    focus); ``mixed``: subject with ``subject_focus_prob``. Without a usable mask the rule falls back to ``random``.
    """

    def __init__(self, focus: str, subject_focus_prob: float, K_range: Sequence[float]) -> None:
        if focus not in FOCUS_RULES:
            raise ParameterError(f"focus must be one of {FOCUS_RULES}, got {focus!r}")
        if not 0 <= subject_focus_prob <= 1:
            raise ParameterError(f"subject_focus_prob must be in [0, 1], got {subject_focus_prob}")
        self.focus, self.subject_focus_prob = focus, float(subject_focus_prob)
        self.K_range = _check_range(K_range, 0.0, K_MAX, "K_range")

    def __call__(
        self, disparity: torch.Tensor, mask: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[float, float, str]:
        use_subject = self.focus == "subject" or (
            self.focus == "mixed" and float(torch.rand((), generator=generator)) < self.subject_focus_prob
        )
        pixel = int(torch.randint(0, disparity.numel(), (), generator=generator))  # drawn always: fixed draw order
        K = _uniform(generator, *self.K_range)
        if use_subject and mask is not None and bool(mask.any()):
            return float(disparity[mask.bool()].median()), K, "subject"
        return float(disparity.flatten()[pixel]), K, "random"


def _as_renderer(renderer: BokehRenderer | Mapping | None, max_coc_px: float | None) -> BokehRenderer:
    """The renderer settings, with ``max_coc_px`` (when given) as the CoC scale. A renderer that sets a different
    ``max_coc_px`` of its own is an error: one of the two values would be silently ignored."""
    own = None
    if renderer is None:
        renderer = BokehRenderer()
    elif isinstance(renderer, Mapping):
        own = renderer.get("max_coc_px")
        renderer = BokehRenderer(**{k: v for k, v in renderer.items() if k != "_target_"})
    else:  # an instantiated BokehRenderer (a config's renderer node) carries its own max_coc_px
        own = renderer.max_coc_px
    if max_coc_px is not None:
        if own is not None and float(own) != float(max_coc_px):
            raise ConfigError(
                f"renderer.max_coc_px={float(own):g} differs from the dataset's max_coc_px={float(max_coc_px):g}, "
                "which its targets use; set one value (in training: data.max_coc_px, which renderer.max_coc_px follows)"
            )
        renderer = dataclasses.replace(renderer, max_coc_px=float(max_coc_px))
    return renderer


def _check_synthetic_renderer(renderer: BokehRenderer) -> None:
    """Synthetic scenes are rendered from their own layers (:func:`~magicbokeh.data.synthetic.render_scene`, exact
    occlusion): of the renderer settings only gamma, aperture, max_coc_px and downsample apply. Settings that
    would be ignored are errors."""
    if renderer.method != "layered":
        raise ConfigError(
            f"renderer.method={renderer.method} cannot apply to synthetic scenes: their ground truth is always "
            "composited layer by layer (renderer=layered); the scatter renderer is for photos"
        )
    if renderer.num_layers != DEFAULT_NUM_LAYERS:
        raise ConfigError(
            f"renderer.num_layers={renderer.num_layers} cannot apply to synthetic scenes: it caps the slices of a "
            f"photo's disparity map, and a synthetic scene brings its own layers; leave it at {DEFAULT_NUM_LAYERS}"
        )
    if renderer.highlight is not None:
        raise ConfigError(
            "renderer.highlight cannot apply to synthetic scenes (the layered scene renderer has no highlight "
            "boost); set renderer.highlight.enabled=false, or use photos (data=paper) for highlight bokeh"
        )


def _degrade(image: torch.Tensor, degradation, generator: torch.Generator) -> torch.Tensor:
    return image.clone() if degradation is None else degradation(image[None], generator)[0]


def _pair_file(image: Path, folder: Path, extensions: Sequence[str]) -> Path | None:
    for extension in extensions:
        for candidate in (folder / f"{image.stem}{extension}", folder / f"{image.stem}{extension.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _read_mask(path: Path, size: tuple[int, int], image_path: Path) -> torch.Tensor:
    mask = read_image(path)[:1] > 0.5
    if tuple(mask.shape[-2:]) != tuple(size):
        raise DatasetError(
            f"mask '{path}' is {mask.shape[-2]}×{mask.shape[-1]} but photo '{image_path}' is {size[0]}×{size[1]}"
        )
    return mask


def _check_same_size(image: torch.Tensor, other: torch.Tensor, image_path: Path, other_path: Path, what: str) -> None:
    if tuple(image.shape[-2:]) != tuple(other.shape[-2:]):
        raise DatasetError(
            f"{what} '{other_path}' is {other.shape[-2]}×{other.shape[-1]} but photo '{image_path}' is "
            f"{image.shape[-2]}×{image.shape[-1]}; they must be pixel-aligned"
        )


def _crop_and_flip(
    tensors: list[torch.Tensor], crop_size: int | None, flip: bool, generator: torch.Generator
) -> list[torch.Tensor]:
    """Random crop (upscaling too-small inputs first; masks last, nearest) and horizontal flip."""
    if crop_size is not None:
        nearest = [t.dtype == torch.bool for t in tensors]
        tensors = ensure_min_size([t.float() if t.dtype == torch.bool else t for t in tensors], crop_size, nearest)
        tensors = [t > 0.5 if flag else t for t, flag in zip(tensors, nearest)]
        tensors = random_crop(tensors, crop_size, generator)
    if flip:
        tensors = random_hflip(tensors, generator)
    return [t.contiguous() for t in tensors]


def _virtual_length(length: int | None, count: int) -> int:
    if length is not None and length < 1:
        raise ParameterError(f"length must be ≥ 1 (or null for one pass over the files), got {length}")
    return count if length is None else int(length)


def _list_files(root: str | os.PathLike, recursive: bool) -> list[Path]:
    root = Path(root)
    if root.is_file():  # a list file: one path per line, relative to the list file's folder
        lines = [line.strip() for line in root.read_text().splitlines()]
        files = [(root.parent / line) for line in lines if line and not line.startswith("#")]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DatasetError(f"list file '{root}' names {len(missing)} missing file(s), first: '{missing[0]}'")
        return files
    if not root.is_dir():
        raise DatasetError(f"image folder or list file '{root}' does not exist")
    if not recursive:
        return list_images(root)
    allowed = {ext.lower() for ext in IMAGE_EXTENSIONS}
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in allowed and not p.name.startswith(".")
    )


# --------------------------------------------------------------------------------------------------------------------
# Bokeh datasets
# --------------------------------------------------------------------------------------------------------------------
class SyntheticBokehDataset(Dataset):
    """Unbounded synthetic layered scenes (``data.synthetic``) with exact ground-truth bokeh, generated per index.

    ``size`` is the square side; ``length`` the (virtual) epoch length. Focus and K follow :class:`_FocusAndStrength`
    (the subject is the scene's subject mask); the target is rendered from the scene's layers (hidden content
    included, so partial occlusion is exact) at ``blur_px = max_coc_px·K/32``; the input is the degraded
    all-in-focus image.
    """

    def __init__(
        self,
        size: int,
        length: int,
        seed: int,
        degradation=None,
        max_coc_px: float | None = None,
        K_range: Sequence[float] = (2.0, 32.0),
        focus: str = "mixed",
        subject_focus_prob: float = 0.5,
        renderer: BokehRenderer | Mapping | None = None,
        scene: Mapping | None = None,
    ) -> None:
        if size < 8 or length < 1:
            raise ParameterError(f"size must be ≥ 8 and length ≥ 1, got size={size}, length={length}")
        self.size, self.length, self.seed = int(size), int(length), int(seed)
        self.degradation = degradation
        self.renderer = _as_renderer(renderer, max_coc_px)
        _check_synthetic_renderer(self.renderer)
        self.sampler = _FocusAndStrength(focus, subject_focus_prob, K_range)
        self.scenes = SyntheticSceneGenerator(self.size, self.size, **dict(scene or {}))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        generator = sample_generator(self.seed, index)
        scene = self.scenes(generator)
        disparity = scene.disparity
        focus, K, rule = self.sampler(disparity, scene.subject_mask, generator)
        renderer = self.renderer
        target = render_scene(
            scene, focus, renderer.blur_px(K), gamma=renderer.gamma, aperture=renderer.aperture,
            downsample=renderer.downsample,
        )  # fmt: skip
        lq = _degrade(scene.image, self.degradation, generator)
        meta = {"index": int(index), "dataset": "synthetic", "source": "synthetic", "focus_rule": rule}
        return bokeh_sample(lq, target, disparity, focus, K, meta, hq=scene.image)


class RenderedBokehDataset(Dataset):
    """Any folder of all-in-focus photos + disparity maps (+ optional subject masks); bokeh rendered on the fly.

    Files pair by stem: ``image_dir/x.jpg`` ↔ ``disparity_dir/x.{npy,png,tif}`` ↔ ``mask_dir/x.png``. ``root`` is a
    shortcut for ``root/image``, ``root/disparity`` and ``root/mask`` (if present), the layout written by
    ``scripts/make_dataset.py synthetic``. A photo with no mask simply uses the ``random`` focus rule.
    ``disparity_is_depth`` inverts depth maps; ``normalize_disparity`` min-max normalises relative maps.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        image_dir: str | os.PathLike | None = None,
        disparity_dir: str | os.PathLike | None = None,
        mask_dir: str | os.PathLike | None = None,
        crop_size: int | None = 512,
        degradation=None,
        seed: int = 0,
        length: int | None = None,
        max_coc_px: float | None = None,
        K_range: Sequence[float] = (2.0, 32.0),
        focus: str = "mixed",
        subject_focus_prob: float = 0.5,
        renderer: BokehRenderer | Mapping | None = None,
        flip: bool = True,
        disparity_is_depth: bool = False,
        normalize_disparity: bool = False,
    ) -> None:
        if root is not None:
            root = Path(root)
            image_dir = image_dir or root / "image"
            disparity_dir = disparity_dir or root / "disparity"
            if mask_dir is None and (root / "mask").is_dir():
                mask_dir = root / "mask"
        if image_dir is None or disparity_dir is None:
            raise ParameterError("RenderedBokehDataset needs root, or both image_dir and disparity_dir")
        self.image_dir, self.disparity_dir = Path(image_dir), Path(disparity_dir)
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        if not self.disparity_dir.is_dir():
            raise DatasetError(f"disparity folder '{self.disparity_dir}' does not exist")
        self.images = list_images(self.image_dir)
        if not self.images:
            raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in '{self.image_dir}'")
        self.disparities = []
        for image in self.images:
            disparity = _pair_file(image, self.disparity_dir, DISPARITY_EXTENSIONS)
            if disparity is None:
                raise DatasetError(
                    f"photo '{image}' has no disparity map: expected '{self.disparity_dir / image.stem}' with one of "
                    f"{DISPARITY_EXTENSIONS}"
                )
            self.disparities.append(disparity)
        self.masks = [
            _pair_file(image, self.mask_dir, IMAGE_EXTENSIONS) if self.mask_dir else None for image in self.images
        ]
        self.crop_size, self.flip, self.seed = crop_size, bool(flip), int(seed)
        self.length = _virtual_length(length, len(self.images))
        self.degradation = degradation
        self.renderer = _as_renderer(renderer, max_coc_px)
        self.sampler = _FocusAndStrength(focus, subject_focus_prob, K_range)
        self.disparity_is_depth, self.normalize_disparity = bool(disparity_is_depth), bool(normalize_disparity)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        file_index = index % len(self.images)
        image_path, disparity_path = self.images[file_index], self.disparities[file_index]
        image = read_image(image_path)
        disparity = read_disparity(disparity_path, normalize=self.normalize_disparity, is_depth=self.disparity_is_depth)
        _check_same_size(image, disparity, image_path, disparity_path, "disparity map")
        mask_path = self.masks[file_index]
        tensors = [image, disparity]
        if mask_path is not None:
            tensors.append(_read_mask(mask_path, image.shape[-2:], image_path))
        generator = sample_generator(self.seed, index)
        tensors = _crop_and_flip(tensors, self.crop_size, self.flip, generator)
        image, disparity = tensors[0], tensors[1]
        mask = tensors[2] if mask_path is not None else None
        focus, K, rule = self.sampler(disparity, mask, generator)
        target = self.renderer(image[None], disparity[None], focus, K)[0]
        lq = _degrade(image, self.degradation, generator)
        meta = {"index": int(index), "dataset": "rendered", "source": str(image_path), "focus_rule": rule}
        return bokeh_sample(lq, target, disparity, focus, K, meta, hq=image)


def focus_mask_from_pair(wide: torch.Tensor, bokeh: torch.Tensor, window: int = 15, threshold: float = 0.02):
    """In-focus region of an aligned (wide DoF, shallow DoF) pair: where the two photos agree locally.

    The in-focus region is the only part a wide aperture leaves unchanged, so the local mean absolute difference
    of the luma (box filter of ``window`` px) below ``threshold`` marks it. Returns a bool ``1×H×W`` mask; the
    rule behind EBB400-LQ focus annotations when no hand-made mask exists.
    """
    luma_weights = torch.tensor([0.299, 0.587, 0.114]).reshape(3, 1, 1)
    difference = ((wide - bokeh).abs() * luma_weights).sum(0, keepdim=True)
    local = F.avg_pool2d(difference[None], window, stride=1, padding=window // 2, count_include_pad=False)[0]
    return local < threshold


class EBBDataset(Dataset):
    """The EBB! dataset (Ignatov et al. 2020): aligned wide / shallow depth-of-field Canon photos, paired by name.

    Layout: ``root/<original_dir>/<n>.jpg`` (all-in-focus input) and ``root/<bokeh_dir>/<n>.jpg`` (target), with
    optional ``disparity_dir`` (precomputed, e.g. Depth Anything V2 on the wide photo) and ``mask_dir`` (focus
    annotations). Splits follow the common convention: ``val294`` is pairs 4400–4693 of the training folder,
    ``train`` everything else, ``all`` every pair. The photos' blur is real, so ``K`` is a fixed annotation
    (EBB! was shot at one aperture, f/1.8). Without disparity the sample has zero disparity/defocus and
    ``meta["has_disparity"] = False`` (estimate depth downstream); focus then comes from the mask or
    :func:`focus_mask_from_pair`.
    """

    VAL294 = range(4400, 4694)

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        crop_size: int | None = 512,
        degradation=None,
        seed: int = 0,
        length: int | None = None,
        K: float = 16.0,
        original_dir: str = "original",
        bokeh_dir: str = "bokeh",
        disparity_dir: str | os.PathLike | None = None,
        mask_dir: str | os.PathLike | None = None,
        flip: bool = True,
    ) -> None:
        if split not in ("train", "val294", "all"):
            raise ParameterError(f"EBB split must be 'train', 'val294' or 'all', got {split!r}")
        self.root = Path(root)
        originals = list_images(self.root / original_dir) if (self.root / original_dir).is_dir() else []
        if not originals:
            raise DatasetError(f"no EBB! photos in '{self.root / original_dir}' (expected <n>.jpg wide-DoF photos)")
        bokeh_folder = self.root / bokeh_dir
        pairs = []
        for original in originals:
            if split != "all" and original.stem.isdigit():
                in_val = int(original.stem) in self.VAL294
                if in_val != (split == "val294"):
                    continue
            target = _pair_file(original, bokeh_folder, IMAGE_EXTENSIONS)
            if target is None:
                raise DatasetError(
                    f"EBB! photo '{original}' has no shallow-DoF partner '{bokeh_folder / original.stem}.jpg'"
                )
            pairs.append((original, target))
        if not pairs:
            raise DatasetError(f"EBB! split '{split}' of '{self.root}' is empty")
        self.pairs = sorted(pairs, key=lambda pair: (len(pair[0].stem), pair[0].stem))  # numeric order for <n>.jpg
        self.disparity_dir = Path(disparity_dir) if disparity_dir is not None else None
        self.mask_dir = Path(mask_dir) if mask_dir is not None else None
        self.disparities = []
        for original, _ in self.pairs:
            disparity = _pair_file(original, self.disparity_dir, DISPARITY_EXTENSIONS) if self.disparity_dir else None
            if self.disparity_dir is not None and disparity is None:
                raise DatasetError(f"EBB! photo '{original}' has no disparity map in '{self.disparity_dir}'")
            self.disparities.append(disparity)
        self.masks = [_pair_file(o, self.mask_dir, IMAGE_EXTENSIONS) if self.mask_dir else None for o, _ in self.pairs]
        self.split, self.crop_size, self.flip, self.seed = split, crop_size, bool(flip), int(seed)
        self.length = _virtual_length(length, len(self.pairs))
        self.degradation = degradation
        if not 0 <= K <= K_MAX:
            raise ParameterError(f"K must be in [0, {K_MAX:g}], got {K}")
        self.K = float(K)

    def __len__(self) -> int:
        return self.length

    def read_pair(self, file_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(wide, bokeh, disparity or None, focus mask) at full size, validated."""
        original_path, target_path = self.pairs[file_index]
        wide, bokeh = read_image(original_path), read_image(target_path)
        _check_same_size(wide, bokeh, original_path, target_path, "shallow-DoF photo")
        disparity = None
        if self.disparities[file_index] is not None:
            disparity = read_disparity(self.disparities[file_index], normalize=True)
            _check_same_size(wide, disparity, original_path, self.disparities[file_index], "disparity map")
        mask_path = self.masks[file_index]
        mask = _read_mask(mask_path, wide.shape[-2:], original_path) if mask_path else focus_mask_from_pair(wide, bokeh)
        return wide, bokeh, disparity, mask

    def __getitem__(self, index: int) -> dict:
        file_index = index % len(self.pairs)
        wide, bokeh, disparity, mask = self.read_pair(file_index)
        has_disparity = disparity is not None
        if disparity is None:
            disparity = torch.zeros(1, *wide.shape[-2:])
        generator = sample_generator(self.seed, index)
        wide, bokeh, disparity, mask = _crop_and_flip(
            [wide, bokeh, disparity, mask], self.crop_size, self.flip, generator
        )
        focus = float(disparity[mask].median()) if has_disparity and bool(mask.any()) else 0.0
        lq = _degrade(wide, self.degradation, generator)
        rule = "mask" if self.masks[file_index] else "pair_agreement"
        meta = {
            "index": int(index),
            "dataset": f"ebb_{self.split}",
            "source": str(self.pairs[file_index][0]),
            "focus_rule": rule,
        }
        return bokeh_sample(lq, bokeh, disparity, focus, self.K, meta, hq=wide, has_disparity=has_disparity)


# --------------------------------------------------------------------------------------------------------------------
# Super-resolution and depth distillation
# --------------------------------------------------------------------------------------------------------------------
class _ImageFolders:
    """Sorted image files of one or more folders or list files (``limit`` keeps the first N of each: FFHQ 10k)."""

    def __init__(self, root, limit, recursive: bool) -> None:
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        limits = limit if isinstance(limit, Sequence) else [limit] * len(roots)
        if len(limits) != len(roots):
            raise ParameterError(f"limit must be one value or one per root ({len(roots)}), got {limit}")
        self.files: list[Path] = []
        for folder, cap in zip(roots, limits):
            found = _list_files(folder, recursive)
            if not found:
                raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under '{folder}'")
            self.files.extend(found[: cap if cap is not None else len(found)])


class SRFolderDataset(Dataset):
    """HR photos from folders or list files (LSDIR, FFHQ, DIV2K layouts: nested folders are searched) → random
    ``crop_size`` crops with horizontal flips and online degradation; zero defocus (``task="sr"``)."""

    def __init__(
        self,
        root: str | os.PathLike | Sequence[str | os.PathLike],
        crop_size: int | None = 512,
        degradation=None,
        seed: int = 0,
        length: int | None = None,
        limit: int | Sequence[int | None] | None = None,
        flip: bool = True,
        recursive: bool = True,
    ) -> None:
        self.files = _ImageFolders(root, limit, recursive).files
        self.crop_size, self.flip, self.seed = crop_size, bool(flip), int(seed)
        self.length = _virtual_length(length, len(self.files))
        self.degradation = degradation

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        path = self.files[index % len(self.files)]
        generator = sample_generator(self.seed, index)
        (target,) = _crop_and_flip([read_image(path)], self.crop_size, self.flip, generator)
        lq = _degrade(target, self.degradation, generator)
        return sr_sample(lq, target, {"index": int(index), "dataset": "sr_folder", "source": str(path)})


class DepthDistillDataset(Dataset):
    """(clean, degraded) pairs for distilling the degradation-aware depth student (teacher sees ``clean``).

    Reads HR photos like :class:`SRFolderDataset` (``root`` folders or list files, e.g. an SA-1B subset); with
    ``root=None`` it uses synthetic scenes of side ``crop_size`` instead (no files needed; smoke runs), and then
    also returns the scene's exact ``disparity`` (``1×H×W``) for depth evaluation against ground truth.
    """

    def __init__(
        self,
        root: str | os.PathLike | Sequence[str | os.PathLike] | None,
        degradation=None,
        crop_size: int = 512,
        seed: int = 0,
        length: int | None = None,
        limit: int | Sequence[int | None] | None = None,
        flip: bool = True,
    ) -> None:
        self.files = _ImageFolders(root, limit, recursive=True).files if root is not None else None
        if self.files is None and length is None:
            raise ParameterError("DepthDistillDataset with root=None (synthetic scenes) needs a length")
        self.scenes = None
        if self.files is None:
            self.scenes = SyntheticSceneGenerator(crop_size, crop_size)
        self.crop_size, self.flip, self.seed = int(crop_size), bool(flip), int(seed)
        self.length = _virtual_length(length, len(self.files) if self.files else 0)
        self.degradation = degradation

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        generator = sample_generator(self.seed, index)
        extra = {}
        if self.files is not None:
            path = self.files[index % len(self.files)]
            (clean,) = _crop_and_flip([read_image(path)], self.crop_size, self.flip, generator)
            source = str(path)
        else:
            scene = self.scenes(generator)
            clean, source = scene.image, "synthetic"
            # synthetic scenes know their exact disparity: depth evaluation against ground truth uses it
            extra["disparity"] = scene.disparity.float()
        degraded = _degrade(clean, self.degradation, generator)
        return {
            "clean": clean.float(),
            "degraded": degraded.float(),
            **extra,
            "meta": {"index": int(index), "source": source},
        }
