"""``python scripts/benchmark.py model``: FAMA efficiency and the full-size forward time.

1. FAMA's masked branch (region partition + ``scaled_dot_product_attention``) against the paper's dense
   formulation (explicit ``B×heads×N×N`` float bias of 0/−∞, then softmax) at SD2.1-base's up-block attention
   sizes: 4096 tokens (64×64 latent, 320 channels = 5 heads × 64) and 1024 tokens (32×32, 640 = 10 × 64). Time and
   peak memory are reported as ratios against the dense reference measured in the same run; plain unmasked SDPA
   is shown as the lower bound.
2. One forward of the SD2.1-base-sized MagicBokeh network (random weights, released surgery) on a 512×512 tile,
   split into VAE encode / ControlNet + UNet / VAE decode.

Peak memory: on CUDA ``max_memory_allocated`` above the pre-call level; on CPU the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set before the call.
"""

from __future__ import annotations

import ctypes
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from magicbokeh.models.attention import dense_region_attention, region_attention
from magicbokeh.utils.cli import ArgumentParser
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

# SD2.1-base up-block self-attention at a 512×512 tile: tokens → (heads, head dim).
SD21_ATTENTION_SHAPES = {4096: (5, 64), 1024: (10, 64), 256: (20, 64)}


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak extra memory (MiB) while running ``fn`` once; None where the platform cannot tell."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    try:
        # Return freed heap pages to the OS first, or new allocations reuse resident pages and show no growth.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        base = _proc_status_kib("VmRSS")
        fn()
        return (_proc_status_kib("VmHWM") - base) / 1024
    except OSError:
        return None


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _subject_mask(side: int, batch: int, device: torch.device) -> torch.Tensor:
    """A centred in-focus disc covering ~30 % of the tokens (a portrait), True = in focus."""
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    radius = side * math.sqrt(0.3 / math.pi)
    disc = ((ys - side / 2 + 0.5) ** 2 + (xs - side / 2 + 0.5) ** 2) <= radius**2
    return disc.flatten().expand(batch, -1).contiguous().to(device)


def attention_benchmark(tokens: int, batch: int, repeats: int, device: torch.device, dtype: torch.dtype) -> dict:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise SystemExit(f"--tokens must be square numbers, got {tokens}")
    heads, dim = SD21_ATTENTION_SHAPES.get(tokens, (5, 64))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, tokens, dim, generator=generator).to(device, dtype) for _ in range(3))
    mask = _subject_mask(side, batch, device)
    scale = dim**-0.5
    variants = {
        "dense −∞ reference": lambda: dense_region_attention(q, k, v, mask, scale),
        "FAMA (region partition)": lambda: region_attention(q, k, v, mask, scale),
        "unmasked SDPA (bound)": lambda: region_attention(q, k, v, None, scale),
    }
    rows = {}
    with torch.no_grad():
        error = (variants["FAMA (region partition)"]() - variants["dense −∞ reference"]()).abs().max().item()
        for name, fn in variants.items():
            rows[name] = {"seconds": median_seconds(fn, device, repeats), "peak_mib": peak_memory_mib(fn, device)}
    return {
        "tokens": tokens,
        "heads": heads,
        "dim": dim,
        "in_focus": mask.float().mean().item(),
        "max_abs_error": error,
        "rows": rows,
    }


def print_attention_result(result: dict) -> None:
    base = result["rows"]["dense −∞ reference"]
    print(
        f"\nFAMA masked branch, {result['tokens']} tokens ({math.isqrt(result['tokens'])}² latent), "
        f"{result['heads']} heads × {result['dim']}, {result['in_focus']:.0%} in focus, "
        f"max |FAMA − dense| = {result['max_abs_error']:.2e}"
    )
    print(f"  {'variant':<26}{'time (ms)':>11}{'speed-up':>10}{'peak (MiB)':>12}{'mem ratio':>11}")
    for name, row in result["rows"].items():
        peak = row["peak_mib"]
        peak_text = "n/a" if peak is None else f"{peak:.1f}"
        ratio = "n/a" if peak is None or base["peak_mib"] is None else f"{base['peak_mib'] / max(peak, 0.1):.1f}×"
        print(
            f"  {name:<26}{row['seconds'] * 1e3:>11.2f}{base['seconds'] / row['seconds']:>9.1f}×"
            f"{peak_text:>12}{ratio:>11}"
        )


def full_forward_benchmark(size: int, repeats: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Time the SD2.1-base-sized network (random weights, released surgery) on one ``size``² tile."""
    from magicbokeh.models.build import SD21_UNET_CONFIG, SD21_VAE_CONFIG, build_model

    start = time.perf_counter()
    model = build_model(name="sd21-random", unet_config=SD21_UNET_CONFIG, vae_config=SD21_VAE_CONFIG)
    model = model.to(device, dtype).eval()
    build_seconds = time.perf_counter() - start
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, size, size, generator=generator).to(device)
    defocus = torch.rand(1, 1, size, size, generator=generator).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        latents = model.encode(images)
        noise = model.predict_noise(latents, defocus)
        stages = {
            "VAE encode": lambda: model.encode(images),
            "ControlNet + UNet": lambda: model.predict_noise(latents, defocus),
            "VAE decode": lambda: model.decode(model.x0_from_noise(latents, noise)),
            "full forward": lambda: model(images, defocus),
        }
        seconds = {}
        for name, fn in stages.items():
            times = []
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                begin = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - begin)
            seconds[name] = statistics.median(times)
    return {"size": size, "parameters": parameters, "build_seconds": build_seconds, "seconds": seconds}


def print_full_forward_result(result: dict, device: torch.device, dtype: torch.dtype) -> None:
    print(
        f"\nSD2.1-base-sized MagicBokeh (random weights, {result['parameters'] / 1e6:.0f} M parameters, "
        f"built in {result['build_seconds']:.1f} s), one {result['size']}×{result['size']} tile on {device} "
        f"({dtype}, {torch.get_num_threads()} CPU threads), median after a warm-up encode + UNet pass:"
    )
    for name, seconds in result["seconds"].items():
        print(f"  {name:<20}{seconds:>9.2f} s")


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="benchmark.py model", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens", type=int, nargs="*", default=[4096, 1024], help="attention sizes (squares; none: skip)"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median) after one warm-up")
    parser.add_argument("--size", type=int, default=512, help="tile size of the full forward")
    parser.add_argument("--full-repeats", type=int, default=1, help="timed repetitions of the full forward stages")
    parser.add_argument("--skip-full", action="store_true", help="only the attention benchmark")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"model benchmark on {device} ({dtype}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for tokens in args.tokens:
        print_attention_result(attention_benchmark(tokens, args.batch, args.repeats, device, dtype))
    if not args.skip_full:
        print_full_forward_result(full_forward_benchmark(args.size, args.full_repeats, device, dtype), device, dtype)
    return 0
