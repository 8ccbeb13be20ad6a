"""Degradation throughput: degraded 512×512 samples per second on one CPU core.

Run as ``python scripts/benchmark.py degradation [--size 512 --samples 40] [--device cuda]``.

Data loading must never starve a GPU: OSEDiff degrades inside ``__getitem__`` on the CPU, so one loader worker (one
core) must deliver at least ``--target`` samples/s (default 4). The run pins torch and OpenCV to one thread, degrades
public-domain photos from scikit-image (512 crops: real image statistics matter: Poisson noise depends on the
number of distinct levels), and prints each preset's rate and its ratio against a bicubic ×4 down/up baseline measured
in the same run, plus the ratio to the target. The last row times a whole ``SRFolderDataset`` sample (PNG decode of a
1024-px photo, crop, flip, ``realesrgan`` degradation), i.e. what one loader worker really delivers. The table also
goes to ``results/degradation.json`` (``--results NAME`` / ``none``).
``--device cuda`` degrades on the GPU instead (images and random generators there; JPEG still goes through
OpenCV on the CPU), with the bicubic baseline on the same device; the dataset row is a CPU loader's and is left out.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import torch
from hydra.utils import instantiate
from skimage import data as skimage_data

from magicbokeh.data.datasets import SRFolderDataset
from magicbokeh.data.degradations import RealESRGANDegradation, add_resize
from magicbokeh.data.io import write_image
from magicbokeh.utils.cli import ArgumentParser
from magicbokeh.utils.config import compose_config
from magicbokeh.utils.devices import parse_device, synchronize
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.results import Table, add_results_option, chosen_results_name, write_results
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


def _rate(sample: Callable[[int], object], samples: int, device: torch.device = torch.device("cpu")) -> float:
    """Samples per second of ``sample(i)`` for i = 0..samples−1, after one warm-up call (allocator, codec tables)."""
    sample(samples)
    synchronize(device)
    start = time.perf_counter()
    for index in range(samples):
        sample(index)
    synchronize(device)
    return samples / (time.perf_counter() - start)


ROW_COLUMNS = ["row", "samples/s/core", "ms/sample", "× bicubic ×4", "× target"]


def _cells(name: str, rate: float, baseline: float, target: float) -> list:
    return [name, rate, 1000 / rate, rate / baseline, rate / target]


def _row(cells: list) -> str:
    name, rate, milliseconds, vs_bicubic, vs_target = cells
    return f"{name:<12}{rate:>16.2f}{milliseconds:>12.1f}{vs_bicubic:>12.3f}{vs_target:>12.2f}"


def _instantiate(preset: str) -> RealESRGANDegradation:
    return instantiate(compose_config("train", [f"degradation={preset}"]).degradation)


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="benchmark.py degradation", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="HR crop size in pixels")
    parser.add_argument("--samples", type=int, default=40, help="samples per row")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--target", type=float, default=4.0, help="required samples/s/core")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the degradations run (cpu, cuda, ...)")
    add_results_option(parser, "degradation")
    args = parser.parse_args(argv)

    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        return _run(args)
    finally:  # leave the caller's thread settings as they were (the benchmark may run inside a test session)
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])


def _run(args: argparse.Namespace) -> int:
    device = parse_device(args.device)
    photos = [photo.to(device) for photo in _photos(args.size)]

    def bicubic_x4(index: int) -> torch.Tensor:
        image = photos[index % len(photos)]
        height, width = image.shape[-2:]
        return add_resize(add_resize(image, (height // 4, width // 4), "bicubic"), (height, width), "bicubic")

    baseline = _rate(bicubic_x4, args.samples, device)
    print(
        f"degradation throughput, {args.size}×{args.size}, 1 core (torch {torch.__version__}), {args.samples} samples"
        + ("" if device.type == "cpu" else f", on {device}")
    )
    print(f"{'row':<12}{'samples/s/core':>16}{'ms/sample':>12}{'vs bicubic':>12}{'vs target':>12}")
    rows = [_cells("bicubic x4", baseline, baseline, args.target)]
    print(_row(rows[-1]))
    rates = {}
    for preset in args.presets:
        degradation = _instantiate(preset)
        rates[preset] = _rate(
            lambda index, d=degradation: d(
                photos[index % len(photos)], sample_generator(args.seed, index, device=device)
            ),
            args.samples,
            device,
        )
        rows.append(_cells(preset, rates[preset], baseline, args.target))
        print(_row(rows[-1]))
    if device.type == "cpu":
        with tempfile.TemporaryDirectory() as folder:
            for number, photo in enumerate(_photos(2 * args.size)):
                write_image(Path(folder) / f"{number}.png", photo[0])
            degradation = _instantiate("realesrgan")
            dataset = SRFolderDataset(folder, crop_size=args.size, degradation=degradation, seed=args.seed)
            rates["sr dataset"] = _rate(dataset.__getitem__, args.samples)
            rows.append(_cells("sr dataset", rates["sr dataset"], baseline, args.target))
            print(_row(rows[-1]))
    # The target is on the degradation itself; the dataset row adds file decoding, which depends on the storage format.
    gated = {name: rate for name, rate in rates.items() if name not in ("none", "sr dataset")}
    slowest = min(gated, key=gated.get) if gated else None
    meets_target = gated[slowest] >= args.target if gated else None
    if gated:
        verdict = "meets" if meets_target else "MISSES"
        print(f"slowest: {slowest} at {gated[slowest]:.2f} samples/s/core, {verdict} the target of {args.target:g}")
    name = chosen_results_name(args.results)
    if name:
        figures = {
            "size": args.size, "samples": args.samples, "target": args.target, "device": str(device),
            "bicubic_x4": baseline, "samples_per_s_per_core": rates, "slowest": slowest,
            "meets_target": meets_target,
        }  # fmt: skip
        table = Table(ROW_COLUMNS, rows, ["", ".2f", ".1f", ".3f", ".2f"])
        path = write_results(
            name, figures, title=f"degradation throughput, {args.size}×{args.size} crops, one CPU core",
            tables={"throughput": table}, seed=args.seed,
        )  # fmt: skip
        print(f"wrote {path}")
    return 0
