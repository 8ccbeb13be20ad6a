"""SSIM speed: the separable float64 window against the direct 11×11 window (``python scripts/benchmark.py metrics``).

Times :func:`magicbokeh.evaluation.metrics.ssim` (RGB and Y channel) and the direct formulation it replaced — the
11×11 outer-product Gaussian window as one float64 ``conv2d`` over the whole image — on the same image pairs in the
same run: public-domain photos from scikit-image cropped to ``--size``², each against a noisy, 8-bit-quantised copy
(prediction-like). Prints the median time of each, their ratio, and the largest difference between the two
formulations' scores, then writes ``results/metric_speed.json`` (:func:`magicbokeh.utils.results.write_results`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from skimage import data as skimage_data

from magicbokeh.errors import ParameterError
from magicbokeh.evaluation.metrics import SSIM_WINDOW, gaussian_taps, rgb_to_y, ssim
from magicbokeh.utils.results import Table, write_results

PHOTOS = ("astronaut", "coffee", "chelsea")


def ssim_direct_window(images: torch.Tensor, references: torch.Tensor, *, y_channel: bool = False) -> torch.Tensor:
    """SSIM with the 2-D window applied directly (121 products per pixel): the formulation timed as the baseline."""
    x, y = images.to(torch.float64), references.to(torch.float64)
    if y_channel:
        x, y = rgb_to_y(x), rgb_to_y(y)
    taps = gaussian_taps().to(x.device)
    channels = x.shape[1]
    window = torch.outer(taps, taps).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x, var_y = local_mean(x * x) - mu_x**2, local_mean(y * y) - mu_y**2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def photo_pairs(size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prediction-like, reference) ``1×3×size×size`` pairs: a photo crop and its noisy 8-bit copy."""
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for name in PHOTOS:
        photo = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1)[None].float() / 255.0
        if min(photo.shape[-2:]) < size:
            photo = F.interpolate(photo, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
        reference = photo[..., :size, :size].contiguous()
        noisy = (reference + 0.03 * torch.randn(reference.shape, generator=generator)).clamp(0, 1)
        pairs.append(((noisy * 255).round() / 255, reference))
    return pairs


def median_time(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmark.py metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="square image side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per image (median)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--name", default="metric_speed", help="results file name (results/<name>.json)")
    args = parser.parse_args(argv)
    if args.size < SSIM_WINDOW or args.repeats < 1:
        raise ParameterError(f"need --size >= {SSIM_WINDOW} and --repeats >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pairs = [(a.to(device), b.to(device)) for a, b in photo_pairs(args.size)]

    rows, figures = [], {}
    for label, y_channel in (("ssim (RGB)", False), ("ssim_y", True)):
        direct, separable = [], []
        for a, b in pairs:
            direct.append(median_time(partial(ssim_direct_window, a, b, y_channel=y_channel), args.repeats, device))
            separable.append(median_time(partial(ssim, a, b, y_channel=y_channel), args.repeats, device))
        difference = max(
            (ssim(a, b, y_channel=y_channel) - ssim_direct_window(a, b, y_channel=y_channel)).abs().item()
            for a, b in pairs
        )
        direct_s, separable_s = statistics.mean(direct), statistics.mean(separable)
        rows.append([label, direct_s, separable_s, direct_s / separable_s, difference])
        figures[label] = {"direct_s": direct_s, "separable_s": separable_s, "speedup": direct_s / separable_s,
                          "max_abs_difference": difference}  # fmt: skip
    threads = torch.get_num_threads()
    table = Table(
        ["metric", "direct 11×11 window (s)", "separable window (s)", "speed-up (×)", "largest score difference"],
        rows,
        ["", ".3f", ".3f", ".1f", ".1e"],
    )
    print(f"SSIM per {args.size}×{args.size} image pair, device {device}, {threads} torch threads, "
          f"{len(pairs)} photos × {args.repeats} repeats (median, mean over photos)")  # fmt: skip
    print(table.markdown())
    path = write_results(
        args.name,
        {"size": args.size, "device": str(device), "threads": threads, "photos": list(PHOTOS), **figures},
        title=f"SSIM time per {args.size}² RGB image pair: separable float64 window vs the direct 2-D window",
        tables={"ssim": table},
    )
    print(f"wrote {path}")
    return 0
