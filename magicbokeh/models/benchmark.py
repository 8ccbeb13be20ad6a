"""``python scripts/benchmark.py model``: FAMA's attention backends against the dense reference, and the full-size
forward time.

1. FAMA's masked branch with every backend of :data:`~magicbokeh.models.attention.ATTENTION_BACKENDS` (``gather``,
   ``sdpa_mask``, ``flex``) against the paper's dense formulation (explicit ``B×heads×N×N`` float bias of 0/−∞, then
   softmax), at SD2.1-base's up-block attention sizes: 4096 tokens (64×64 latent of a 512² tile, 320 channels =
   5 heads × 64) and 1024 tokens (32×32, 640 = 10 × 64). Time and peak memory are printed as ratios against the
   dense reference measured in the same run, with each variant's largest deviation from its own dense formula
   (computed in float32 from the same inputs); plain unmasked SDPA is shown as the lower bound. Two ablation masks
   are timed beside them: ``levels:4`` through the default backend (four defocus bands: the disc in focus, three
   rings around it) and ``soft`` (the −|δᵢ − δⱼ|/τ bias, a dense float ``N×N`` tensor by construction). The fastest
   backend at the largest size is picked, and the default backend's ratios there are checked against the targets
   (≥ 3× faster, ≥ 8× less peak memory than the dense reference). ``flex`` is compiled on CUDA (the compilation
   falls in the untimed warm-up); elsewhere torch runs its eager reference path, which materialises the full score
   matrix, so off CUDA it costs about what the dense formula costs.
2. One forward of the SD2.1-base-sized MagicBokeh network (random weights, released surgery) on a 512×512 tile with
   the picked backend (or ``--attention-backend``), split into VAE encode / ControlNet + UNet / VAE decode.

Peak memory: on CUDA ``max_memory_allocated`` above the pre-call level; on CPU the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set before the call. Every figure is written
to ``results/<--results>.json`` (:func:`magicbokeh.utils.results.write_results`).
"""

from __future__ import annotations

import ctypes
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from magicbokeh.errors import ParameterError
from magicbokeh.models.attention import (
    ATTENTION_BACKENDS,
    DEFAULT_ATTENTION_BACKEND,
    dense_region_attention,
    dense_soft_attention,
    region_attention,
    soft_region_attention,
)
from magicbokeh.optics.defocus import defocus_bands
from magicbokeh.utils.cli import ArgumentParser
from magicbokeh.utils.devices import parse_device, synchronize
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

# SD2.1-base up-block self-attention at a 512×512 tile: tokens → (heads, head dim).
SD21_ATTENTION_SHAPES = {4096: (5, 64), 1024: (10, 64), 256: (20, 64)}
SPEEDUP_TARGET = 3.0
MEMORY_TARGET = 8.0
DENSE, UNMASKED, LEVELS, SOFT = "dense", "unmasked", "levels4", "soft"
SOFT_TAU = 0.1  # model.fama.tau's default
LABELS = {DENSE: "dense −∞ reference", UNMASKED: "unmasked SDPA (bound)"} | {
    backend: f"FAMA {backend}" for backend in ATTENTION_BACKENDS
} | {LEVELS: f"FAMA levels:4 ({DEFAULT_ATTENTION_BACKEND})", SOFT: "FAMA soft (dense bias)"}


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
    fn()  # warm-up (and, for a compiled kernel, its compilation)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _subject_defocus(side: int, batch: int, device: torch.device) -> torch.Tensor:
    """Token defocus of a portrait: 0 on a centred disc covering ~30 % of the tokens, rising linearly to 1 at the
    farthest corner (``B×N``)."""
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    radius = side * math.sqrt(0.3 / math.pi)
    distance = ((ys - side / 2 + 0.5) ** 2 + (xs - side / 2 + 0.5) ** 2).sqrt()
    defocus = ((distance - radius) / (distance.max() - radius)).clamp(0.0, 1.0)
    return defocus.flatten().expand(batch, -1).contiguous().to(device)


def _subject_mask(side: int, batch: int, device: torch.device) -> torch.Tensor:
    """The in-focus disc of :func:`_subject_defocus` (True = in focus)."""
    return _subject_defocus(side, batch, device) == 0


def attention_benchmark(
    tokens: int,
    batch: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    backends: tuple[str, ...] = ATTENTION_BACKENDS,
) -> dict:
    """Time, peak memory and deviation from the dense reference of every backend at one attention size."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ParameterError(f"--tokens must be square numbers, got {tokens}")
    heads, dim = SD21_ATTENTION_SHAPES.get(tokens, (5, 64))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, tokens, dim, generator=generator).to(device, dtype) for _ in range(3))
    mask = _subject_mask(side, batch, device)
    token_defocus = _subject_defocus(side, batch, device)
    bands = defocus_bands(token_defocus[:, None, None, :], 4)[:, 0, 0, :]
    scale = dim**-0.5
    variants: dict[str, Callable[[], torch.Tensor]] = {DENSE: lambda: dense_region_attention(q, k, v, mask, scale)}
    for backend in backends:
        variants[backend] = lambda backend=backend: region_attention(q, k, v, mask, scale, backend=backend)
    variants[LEVELS] = lambda: region_attention(q, k, v, bands, scale, backend=DEFAULT_ATTENTION_BACKEND)
    variants[SOFT] = lambda: soft_region_attention(q, k, v, token_defocus, SOFT_TAU, scale)
    variants[UNMASKED] = lambda: region_attention(q, k, v, None, scale)
    rows = {}
    with torch.no_grad():
        # The deviation is measured against each variant's formula in float32 on the same (possibly half-precision)
        # inputs, so it is the implementation's own rounding, not the input's.
        q32, k32, v32 = q.float(), k.float(), v.float()
        references = {
            LEVELS: dense_region_attention(q32, k32, v32, bands, scale),
            SOFT: dense_soft_attention(q32, k32, v32, token_defocus, SOFT_TAU, scale),
        }
        reference = dense_region_attention(q32, k32, v32, mask, scale)
        for name, fn in variants.items():
            expected = references.get(name, reference)
            error = None if name == UNMASKED else (fn().float() - expected).abs().max().item()
            rows[name] = {
                "label": LABELS[name],
                "seconds": median_seconds(fn, device, repeats),
                "peak_mib": peak_memory_mib(fn, device),
                "max_abs_error": error,
            }
            logger.debug("%d tokens, %s: %.2f ms", tokens, LABELS[name], rows[name]["seconds"] * 1e3)
    dense = rows[DENSE]
    for row in rows.values():
        row["speedup"] = dense["seconds"] / row["seconds"]
        measured = row["peak_mib"] is not None and dense["peak_mib"] is not None
        row["memory_ratio"] = dense["peak_mib"] / max(row["peak_mib"], 0.1) if measured else None
    return {
        "tokens": tokens,
        "heads": heads,
        "dim": dim,
        "batch": batch,
        "in_focus": mask.float().mean().item(),
        "fastest_backend": min(backends, key=lambda name: rows[name]["seconds"]),
        "rows": rows,
    }


def print_attention_result(result: dict) -> None:
    print(
        f"\nFAMA masked branch, {result['tokens']} tokens ({math.isqrt(result['tokens'])}² latent), batch "
        f"{result['batch']}, {result['heads']} heads × {result['dim']}, {result['in_focus']:.0%} in focus"
    )
    print(f"  {'variant':<24}{'time (ms)':>11}{'speed-up':>10}{'peak (MiB)':>12}{'mem ratio':>11}{'max |Δ|':>10}")
    for row in result["rows"].values():
        peak = "n/a" if row["peak_mib"] is None else f"{row['peak_mib']:.1f}"
        ratio = "n/a" if row["memory_ratio"] is None else f"{row['memory_ratio']:.1f}×"
        error = "–" if row["max_abs_error"] is None else f"{row['max_abs_error']:.1e}"
        print(
            f"  {row['label']:<24}{row['seconds'] * 1e3:>11.2f}{row['speedup']:>9.1f}×{peak:>12}{ratio:>11}{error:>10}"
        )
    print(f"  fastest backend: {result['fastest_backend']}")


def check_default_backend(result: dict, backend: str = DEFAULT_ATTENTION_BACKEND) -> dict:
    """The default backend's ratios against the dense reference, and whether they meet the targets."""
    row = result["rows"][backend]
    memory_ok = row["memory_ratio"] is not None and row["memory_ratio"] >= MEMORY_TARGET
    return {
        "backend": backend,
        "tokens": result["tokens"],
        "speedup": row["speedup"],
        "memory_ratio": row["memory_ratio"],
        "meets_targets": bool(row["speedup"] >= SPEEDUP_TARGET and memory_ok),
    }


def full_forward_benchmark(
    size: int, repeats: int, device: torch.device, dtype: torch.dtype, attention_backend: str
) -> dict:
    """Time the SD2.1-base-sized network (random weights, released surgery) on one ``size``² tile."""
    from magicbokeh.models.build import SD21_UNET_CONFIG, SD21_VAE_CONFIG, build_model

    start = time.perf_counter()
    model = build_model(
        name="sd21-random",
        unet_config=SD21_UNET_CONFIG,
        vae_config=SD21_VAE_CONFIG,
        attention_backend=attention_backend,
    )
    model = model.to(device, dtype).eval()
    build_seconds = time.perf_counter() - start
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, size, size, generator=generator).to(device)
    defocus = torch.rand(1, 1, size, size, generator=generator).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        latents = model.encode(images)
        noise = model.predict_noise(latents, defocus)  # warm-up (kernel selection, flex compilation on CUDA)
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
                synchronize(device)
                begin = time.perf_counter()
                fn()
                synchronize(device)
                times.append(time.perf_counter() - begin)
            seconds[name] = statistics.median(times)
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "size": size,
        "attention_backend": attention_backend,
        "parameters": parameters,
        "build_seconds": build_seconds,
        "seconds": seconds,
        "peak_gpu_memory_gib": peak_gib,
    }


def print_full_forward_result(result: dict, device: torch.device, dtype: torch.dtype) -> None:
    print(
        f"\nSD2.1-base-sized MagicBokeh (random weights, {result['parameters'] / 1e6:.0f} M parameters, "
        f"built in {result['build_seconds']:.1f} s), one {result['size']}×{result['size']} tile on {device} "
        f"({dtype}, FAMA backend {result['attention_backend']}, {torch.get_num_threads()} CPU threads), median "
        "after a warm-up encode + UNet pass:"
    )
    for name, seconds in result["seconds"].items():
        print(f"  {name:<20}{seconds:>9.3f} s")
    if result["peak_gpu_memory_gib"] is not None:
        print(f"  peak GPU memory {result['peak_gpu_memory_gib']:.2f} GiB")


def write_benchmark_results(name: str, attention: list[dict], default_check: dict | None, forward: dict | None,
                            device: torch.device, dtype: torch.dtype) -> Path:  # fmt: skip
    from magicbokeh.utils.results import Table, write_results

    rows = [
        [result["tokens"], row["label"], row["seconds"] * 1e3]
        + [row[column] for column in ("speedup", "peak_mib", "memory_ratio", "max_abs_error")]
        for result in attention
        for row in result["rows"].values()
    ]
    tables = {
        "attention": Table(
            ["tokens", "variant", "time (ms)", "× dense speed", "peak (MiB)", "× dense memory", "max |Δ| vs formula"],
            rows,
            ["d", "", ".2f", ".1f", ".1f", ".1f", ".1e"],
        )
    }
    if forward is not None:
        tables["forward"] = Table(["stage", "seconds"], [[k, v] for k, v in forward["seconds"].items()], ["", ".3f"])
    figures = {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "attention": {str(result["tokens"]): result for result in attention},
        "picked_backend": attention[0]["fastest_backend"] if attention else None,
        "default_backend_vs_dense": default_check,
        "targets": {"speedup": SPEEDUP_TARGET, "memory_ratio": MEMORY_TARGET},
        "forward": forward,
    }
    title = "FAMA attention backends vs the dense reference, and the SD2.1-sized forward"
    return write_results(name, figures, title=f"{title} ({device}, {figures['dtype']})", tables=tables, seed=0)


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="benchmark.py model", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens", type=int, nargs="*", default=[4096, 1024], help="attention sizes (squares; none: skip)"
    )
    parser.add_argument("--backends", nargs="+", default=list(ATTENTION_BACKENDS), choices=ATTENTION_BACKENDS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median) after one warm-up")
    parser.add_argument("--size", type=int, default=512, help="tile size of the full forward")
    parser.add_argument("--full-repeats", type=int, default=1, help="timed repetitions of the full forward stages")
    parser.add_argument("--skip-full", action="store_true", help="only the attention benchmark")
    parser.add_argument(
        "--attention-backend", choices=ATTENTION_BACKENDS, default=None,
        help="FAMA backend of the full forward (default: the fastest at the largest --tokens, else the default)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--results", default="model", help="results file name under results/ ('none': write none)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device, dtype = parse_device(args.device), getattr(torch, args.dtype)
    print(f"model benchmark on {device} ({dtype}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    # Largest size first: it decides the picked backend and the target check.
    attention = [
        attention_benchmark(tokens, args.batch, args.repeats, device, dtype, tuple(args.backends))
        for tokens in sorted(args.tokens, reverse=True)
    ]
    for result in attention:
        print_attention_result(result)
    default_check = None
    if attention and DEFAULT_ATTENTION_BACKEND in args.backends:
        default_check = check_default_backend(attention[0])
        verdict = "meets" if default_check["meets_targets"] else "MISSES"
        memory = default_check["memory_ratio"]
        memory_text = "n/a" if memory is None else f"{memory:.1f}×"
        print(
            f"\ndefault backend ({DEFAULT_ATTENTION_BACKEND}) at {default_check['tokens']} tokens: "
            f"{default_check['speedup']:.1f}× faster, {memory_text} less peak memory than the dense reference; "
            f"{verdict} the targets (≥ {SPEEDUP_TARGET:g}×, ≥ {MEMORY_TARGET:g}×)"
        )
    if attention:
        print(f"picked backend (fastest at {attention[0]['tokens']} tokens): {attention[0]['fastest_backend']}")
    forward = None
    if not args.skip_full:
        picked = attention[0]["fastest_backend"] if attention else DEFAULT_ATTENTION_BACKEND
        backend = args.attention_backend or picked
        forward = full_forward_benchmark(args.size, args.full_repeats, device, dtype, backend)
        print_full_forward_result(forward, device, dtype)
    if args.results.strip().lower() not in ("", "none"):
        path = write_benchmark_results(args.results, attention, default_check, forward, device, dtype)
        print(f"\nresults: {path}")
    return 0
