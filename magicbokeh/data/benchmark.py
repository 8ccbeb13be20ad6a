"""Degradation throughput: degraded 512×512 samples per second on one CPU core.

Run as ``python scripts/benchmark.py degradation [--size 512 --samples 40]``.

Data loading must never starve a GPU: OSEDiff degrades inside ``__getitem__`` on the CPU, so one loader worker (one
core) must deliver at least ``--target`` samples/s (default 4). The run pins torch and OpenCV to one thread, degrades
public-domain photos from scikit-image (random 512 crops, real image statistics matter: Poisson noise depends on the
number of distinct levels), and prints each preset's rate and its ratio against a bicubic ×4 down/up baseline measured
in the same run, plus the ratio to the target.
"""

from __future__ import annotations

import argparse
import time

import cv2
import torch
from skimage import data as skimage_data

from magicbokeh.data.degradations import RealESRGANDegradation, add_resize
from magicbokeh.utils.config import compose_config
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.seeding import sample_generator

logger = get_logger(__name__)

PRESETS = ("realesrgan", "zoom", "none")


def _photos(size: int) -> list[torch.Tensor]:
    """Public-domain photos (NASA, CC0) as 1×3×size×size crops (upsampled first when a photo is smaller)."""
    photos = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1)[None].float() / 255.0
        short = min(image.shape[-2:])
        if short < size:
            factor = size / short
            image = add_resize(image, (round(image.shape[-2] * factor), round(image.shape[-1] * factor)), "bicubic")
        photos.append(image[..., :size, :size].clamp(0, 1).contiguous())
    return photos


def _rate(fn, photos: list[torch.Tensor], samples: int, seed: int) -> float:
    fn(photos[0], sample_generator(seed, -1))  # warm-up (allocator, codec tables)
    start = time.perf_counter()
    for index in range(samples):
        fn(photos[index % len(photos)], sample_generator(seed, index))
    return samples / (time.perf_counter() - start)


def _bicubic_x4(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    height, width = image.shape[-2:]
    return add_resize(add_resize(image, (height // 4, width // 4), "bicubic"), (height, width), "bicubic")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py degradation", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="HR crop size in pixels")
    parser.add_argument("--samples", type=int, default=40, help="samples per preset")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--target", type=float, default=4.0, help="required samples/s/core")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    photos = _photos(args.size)
    baseline = _rate(_bicubic_x4, photos, args.samples, args.seed)
    print(
        f"degradation throughput, {args.size}×{args.size}, 1 core (torch {torch.__version__}), {args.samples} samples"
    )
    print(f"{'preset':<12}{'samples/s/core':>16}{'ms/sample':>12}{'vs bicubic':>12}{'vs target':>12}")
    print(f"{'bicubic x4':<12}{baseline:>16.2f}{1000 / baseline:>12.1f}{1.0:>12.2f}{baseline / args.target:>12.2f}")
    worst = float("inf")
    for preset in args.presets:
        degradation: RealESRGANDegradation = _instantiate(preset)
        rate = _rate(degradation, photos, args.samples, args.seed)
        worst = min(worst, rate)
        print(f"{preset:<12}{rate:>16.2f}{1000 / rate:>12.1f}{rate / baseline:>12.3f}{rate / args.target:>12.2f}")
    verdict = "meets" if worst >= args.target else "MISSES"
    print(f"slowest preset: {worst:.2f} samples/s/core, {verdict} the target of {args.target:g}")
    return 0


def _instantiate(preset: str) -> RealESRGANDegradation:
    from hydra.utils import instantiate

    return instantiate(compose_config("train", [f"degradation={preset}"]).degradation)
