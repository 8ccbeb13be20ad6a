"""Geometric transforms: seeded joint crops and flips of an image and its aligned maps, and the bicubic resize.

The random functions take a ``torch.Generator``: the dataset passes the per-sample generator, so a sample's crop and
flip are part of its reproducible identity. Their tensors are ``C×H×W`` and must share H×W.

:func:`resize_images` / :func:`upsample` are the one bicubic resize of ``B×C×H×W`` images that inference,
evaluation and validation share (the model's input is the LQ photo enlarged this way, as in training).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from magicbokeh.errors import InvalidInputError, ParameterError


def _check_same_size(tensors: Sequence[torch.Tensor]) -> tuple[int, int]:
    sizes = {tuple(t.shape[-2:]) for t in tensors}
    if len(sizes) != 1:
        raise InvalidInputError(f"jointly transformed tensors must share H×W, got sizes {sorted(sizes)}")
    return next(iter(sizes))


def random_crop(tensors: Sequence[torch.Tensor], size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """The same random ``size×size`` window of every tensor (call :func:`ensure_min_size` first)."""
    height, width = _check_same_size(tensors)
    if height < size or width < size:
        raise InvalidInputError(f"cannot crop {size}×{size} from a {height}×{width} image")
    top = int(torch.randint(0, height - size + 1, (), generator=generator))
    left = int(torch.randint(0, width - size + 1, (), generator=generator))
    return [t[..., top : top + size, left : left + size] for t in tensors]


def random_hflip(tensors: Sequence[torch.Tensor], generator: torch.Generator, prob: float = 0.5) -> list[torch.Tensor]:
    """Mirror all tensors left-right together with probability ``prob`` (the only augmentation OSEDiff uses)."""
    flip = float(torch.rand((), generator=generator)) < prob
    return [t.flip(-1) if flip else t for t in tensors]


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of ``B×C×H×W`` images in [0, 1] to ``size`` (H, W), clamped: bicubic overshoots at edges.

    Antialiasing only when shrinking: for enlarging it changes nothing but the cost. Same size: returned as is.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    resized = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=shrinking)
    return resized.clamp_(0.0, 1.0)


def upsample(images: torch.Tensor, scale: float) -> torch.Tensor:
    """:func:`resize_images` by a factor: each side becomes ``round(side · scale)`` (at least 1)."""
    if isinstance(scale, bool) or not (isinstance(scale, int | float) and scale > 0):
        raise ParameterError(f"scale must be a positive number, got {scale!r}")
    size = (max(round(images.shape[-2] * scale), 1), max(round(images.shape[-1] * scale), 1))
    return resize_images(images, size)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bicubic resize of a ``C×H×W`` image in [0, 1] (for fitting a photo, not for degradation)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)


def resize_map(values: torch.Tensor, size: tuple[int, int], *, nearest: bool = False) -> torch.Tensor:
    """Resize a ``1×H×W`` disparity (bilinear, antialiased) or mask (``nearest``) map."""
    if tuple(values.shape[-2:]) == tuple(size):
        return values
    if nearest:
        return F.interpolate(values[None].float(), size=size, mode="nearest")[0].to(values.dtype)
    return F.interpolate(values[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def ensure_min_size(tensors: Sequence[torch.Tensor], size: int, nearest: Sequence[bool] = ()) -> list[torch.Tensor]:
    """Upscale (aspect kept) so the short side is at least ``size``; no-op for large enough inputs.

    ``nearest[i]`` marks masks. The first tensor is treated as the image (bicubic), the others as maps.
    """
    height, width = _check_same_size(tensors)
    if min(height, width) >= size:
        return list(tensors)
    factor = size / min(height, width)
    target = (max(size, round(height * factor)), max(size, round(width * factor)))
    flags = list(nearest) + [False] * (len(tensors) - len(nearest))
    out = [resize_image(tensors[0], target)]
    out += [resize_map(t, target, nearest=flag) for t, flag in zip(tensors[1:], flags[1:])]
    return out


def center_crop(tensors: Sequence[torch.Tensor], size: int) -> list[torch.Tensor]:
    """The central ``size×size`` window of every tensor (validation)."""
    height, width = _check_same_size(tensors)
    if height < size or width < size:
        raise InvalidInputError(f"cannot crop {size}×{size} from a {height}×{width} image")
    top, left = (height - size) // 2, (width - size) // 2
    return [t[..., top : top + size, left : left + size] for t in tensors]
