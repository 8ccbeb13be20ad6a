"""Degradation engines compared: with the same sampled parameters, how far from the HQ image each leaves the LQ.

Run as ``python scripts/benchmark.py degradation-presets [--sizes 512 500 --seeds 24]``.

``realesrgan`` and ``osediff`` draw the same parameters (same ranges, same generator); they differ only in how they
apply them (``magicbokeh.data.degradations``). Each sample is a random ``size×size`` crop of a public-domain colour
photo from scikit-image that is at least that large natively (no upsampled photo: JPEG and resizing act on real
detail). Its parameters are drawn once from ``sample_generator(seed, index)`` and applied by every engine below:

  realesrgan         ours: libjpeg (OpenCV), rounded sizes, BT.601 grey luma, LR rounded to 8 bits before resize-back
  only JPEG          realesrgan with OSEDiff's differentiable JPEG (transposed tables, as BasicSR's)
  only JPEG (std)    the same with the standard's table orientation: what the transposition alone changes
  only resize        realesrgan with F.interpolate(scale_factor=r1) and int()-truncated later sizes
  only luma          realesrgan with torchvision's grey weights (0.2989 for red)
  only rounding      realesrgan without the 8-bit rounding before resize-back
  osediff            all of OSEDiff's choices (configs/degradation/osediff.yaml)

The figure is PSNR(LQ, HQ) in dB over RGB in [0, 1]. Each engine's row gives its mean and its paired difference from
realesrgan (mean ± standard error over the samples): a negative difference means that engine degrades harder. Crops
of 512 px give a 128 px LR image, a multiple of the JPEG's 16 px unit; 500 px give 125 px, where OSEDiff's zero
padding shares blocks with the image. The results file is ``results/degradation_presets.json``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from skimage import data as skimage_data
from tqdm import tqdm

from magicbokeh.data.degradations import TORCHVISION_LUMA, RealESRGANDegradation
from magicbokeh.errors import ParameterError
from magicbokeh.utils.config import compose_config
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.results import Table, write_results
from magicbokeh.utils.seeding import sample_generator

logger = get_logger(__name__)

RESULTS_NAME = "degradation_presets"
# Colour photos shipped with scikit-image whose short side is at least 512 px (NASA / public domain).
PHOTOS = ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina")


@dataclass(frozen=True)
class Engine:
    name: str
    overrides: tuple[str, ...]  # Hydra overrides of the degradation config group
    description: str


def _degradation_overrides(**values) -> tuple[str, ...]:
    def render(value) -> str:
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(str(v) for v in value) + "]"
        return str(value).lower() if isinstance(value, bool) else str(value)

    return tuple(f"degradation.{key}={render(value)}" for key, value in values.items())


ENGINES = (
    Engine("realesrgan", ("degradation=realesrgan",), "ours: libjpeg, rounded sizes"),
    Engine(
        "only JPEG",
        ("degradation=realesrgan", *_degradation_overrides(jpeg_codec="diff_jpeg", jpeg_transpose_tables=True)),
        "OSEDiff's differentiable JPEG (BasicSR's transposed tables)",
    ),
    Engine(
        "only JPEG (std tables)",
        ("degradation=realesrgan", *_degradation_overrides(jpeg_codec="diff_jpeg")),
        "differentiable JPEG, tables as the standard orients them",
    ),
    Engine(
        "only resize",
        ("degradation=realesrgan", *_degradation_overrides(resize_grid="scale_factor")),
        "scale_factor first resize, int() sizes after",
    ),
    Engine(
        "only luma",
        ("degradation=realesrgan", *_degradation_overrides(gray_noise_luma=TORCHVISION_LUMA)),
        "torchvision's grey weights",
    ),
    Engine(
        "only rounding",
        ("degradation=realesrgan", *_degradation_overrides(quantize_before_resize_back=False)),
        "no 8-bit rounding before resize-back",
    ),
    Engine("osediff", ("degradation=osediff",), "all of OSEDiff's choices"),
)


def _photos() -> dict[str, torch.Tensor]:
    return {
        name: torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1)[None].float() / 255.0
        for name in PHOTOS
    }


def _crops(photos: dict[str, torch.Tensor], size: int, seeds: int, base_seed: int) -> list[torch.Tensor]:
    """``seeds`` random ``size×size`` crops of every photo (``1×3×size×size`` in [0, 1])."""
    crops = []
    for photo_index, (name, image) in enumerate(photos.items()):
        height, width = image.shape[-2:]
        if min(height, width) < size:
            raise ParameterError(f"--size {size} is larger than the photo '{name}' ({height}×{width})")
        for seed in range(seeds):
            generator = sample_generator(base_seed, photo_index, "crop", seed)
            top = int(torch.randint(0, height - size + 1, (), generator=generator))
            left = int(torch.randint(0, width - size + 1, (), generator=generator))
            crops.append(image[..., top : top + size, left : left + size].contiguous())
    return crops


def _psnr(lq: torch.Tensor, hq: torch.Tensor) -> float:
    return -10.0 * math.log10(max(float(((lq - hq) ** 2).mean()), 1e-12))


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def build_engines() -> dict[str, RealESRGANDegradation]:
    """Every engine of :data:`ENGINES`, composed from the degradation configs."""
    return {
        engine.name: instantiate(compose_config("train", list(engine.overrides)).degradation) for engine in ENGINES
    }


def measure(
    engines: dict[str, RealESRGANDegradation], crops: list[torch.Tensor], base_seed: int
) -> dict[str, dict[str, float]]:
    """Per engine: mean PSNR(LQ, HQ) and the paired difference from ``realesrgan`` (mean, standard error)."""
    sampler = engines["realesrgan"]
    psnrs: dict[str, list[float]] = {name: [] for name in engines}
    size = crops[0].shape[-1]
    for index, hq in enumerate(tqdm(crops, desc=f"degrading {size}² crops", unit="crop")):
        params = sampler.sample_params(sample_generator(base_seed, index, "degradation"))
        for name, engine in engines.items():
            psnrs[name].append(_psnr(engine.apply(hq, params), hq))
    summary = {}
    for name, values in psnrs.items():
        delta, stderr = _mean_and_stderr([v - r for v, r in zip(values, psnrs["realesrgan"])])
        summary[name] = {"psnr_db": sum(values) / len(values), "delta_db": delta, "delta_stderr_db": stderr}
    return summary


def _table(summary: dict[str, dict[str, float]]) -> Table:
    descriptions = {engine.name: engine.description for engine in ENGINES}
    rows = [
        [name, descriptions[name], values["psnr_db"], values["delta_db"], values["delta_stderr_db"]]
        for name, values in summary.items()
    ]
    return Table(
        ["engine", "what differs from realesrgan", "PSNR LQ–HQ (dB)", "Δ vs realesrgan (dB)", "± s.e. (dB)"],
        rows,
        ["", "", ".3f", "+.3f", ".3f"],
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py degradation-presets", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[512, 500],
        help="HR crop sides in pixels; 500 makes the LR side 125, not a multiple of the JPEG's 16",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=24, help="random crops (and degradations) per photo")
    parser.add_argument("--seed", type=int, default=0, help="base seed of crops and degradation parameters")
    parser.add_argument("--out-dir", default=None, help="where to write the results file (default: results/)")
    args = parser.parse_args(argv)
    if min(args.sizes) < 16 or args.seeds < 1:
        raise ParameterError(f"--sizes must be ≥ 16 and --seeds ≥ 1, got {args.sizes} and {args.seeds}")

    count = len(PHOTOS) * args.seeds
    figures = {"crops_per_size": count, "photos": list(PHOTOS), "sizes": {}}
    tables = {}
    engines, photos = build_engines(), _photos()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the comparison is paired, not timed; one thread keeps a shared machine usable
    try:
        for size in args.sizes:
            summary = measure(engines, _crops(photos, size, args.seeds, args.seed), args.seed)
            figures["sizes"][str(size)] = summary
            tables[f"psnr_{size}"] = _table(summary)
            print(f"\n{count} crops of {size}² ({', '.join(PHOTOS)}; {args.seeds} per photo), same parameters\n")
            print(tables[f"psnr_{size}"].markdown())
    finally:
        torch.set_num_threads(threads)
    sizes = ", ".join(f"{size}²" for size in args.sizes)
    path = write_results(
        RESULTS_NAME,
        figures,
        title=f"PSNR of LQ vs HQ per degradation engine with the same sampled parameters ({count} crops of {sizes})",
        tables=tables,
        seed=args.seed,
        notes=(
            "Each crop is degraded once per engine with the same DegradationParams; Δ is the paired mean difference "
            "from realesrgan (negative: the engine leaves the LQ further from HQ), ± its standard error. Table "
            "psnr_<side> holds the crops of that side."
        ),
        out_dir=args.out_dir,
    )
    logger.info("wrote %s", path)
    return 0
