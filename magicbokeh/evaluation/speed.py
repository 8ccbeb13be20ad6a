"""Speed benchmark: the unified model vs the two-stage baselines (``python scripts/benchmark.py speed``).

For each architecture (``tiny`` from ``configs/model/tiny.yaml``; ``sd21``: the SD2.1-base-sized network of
``configs/model/sd21.yaml`` with random weights, nothing loaded) and each method of
:mod:`magicbokeh.evaluation.baselines`, on one tile of ``--size``² pixels, batch 1, run as the evaluation runs it
(the inference pipeline on the whole image: one network pass, AdaIN colour fix, precision ``auto`` = fp16 on CUDA
as in the release, fp32 on the CPU):

- latency (median of ``--repeats`` timed calls after ``--warmup`` untimed ones) and images/s;
- peak memory: on CUDA the allocator's peak during the calls; on the CPU the process's peak resident set size
  (``ru_maxrss``, which includes the weights and never decreases — read it as an upper bound);
- parameters of the networks the method runs (the renderer has none);
- FLOPs of one call counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention; the renderer's FFTs
  and elementwise work are not counted, so its FLOPs read as ~0 and its latency is the meaningful number).

Ratios are printed against the unified model measured in the same run (the paper compares the same quantities:
latency against two-stage pipelines, parameters, FLOPs and memory). The records and the table also go to
``results/speed.json`` (``--results NAME`` / ``none``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from magicbokeh.errors import ParameterError
from magicbokeh.evaluation.baselines import PipelineSettings, build_method
from magicbokeh.utils.cli import ArgumentParser
from magicbokeh.utils.config import CONFIG_DIR
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.results import Table, add_results_option, chosen_results_name, write_results

logger = get_logger(__name__)

ARCHS = ("tiny", "sd21")
WHOLE_IMAGE = PipelineSettings(tile_size=None, tile_stride=None)
SPEED_METHODS = ("model", "two_stage", "model_two_pass", "bicubic_renderer")
LABELS = {
    "model": "unified (1 pass)",
    "two_stage": "two-stage: SR pass → renderer",
    "model_two_pass": "two-pass: SR pass → bokeh pass",
    "bicubic_renderer": "renderer only (bicubic input)",
}


def build_random_model(arch: str, device: torch.device) -> torch.nn.Module:
    """The network of ``configs/model/<arch>.yaml`` with random weights (SD2.1 uses its published architecture)."""
    from magicbokeh.models.build import SD21_UNET_CONFIG, SD21_VAE_CONFIG, build_model

    if arch not in ARCHS:
        raise ParameterError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHS)}")
    settings = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{arch}.yaml"), resolve=False)
    settings = {key: value for key, value in settings.items() if not key.startswith("_")}
    settings["gradient_checkpointing"] = False  # inference timing
    if arch == "sd21":
        settings.update(sd21_path=None, unet_config=SD21_UNET_CONFIG, vae_config=SD21_VAE_CONFIG)
    return build_model(**settings).to(device).eval()


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int, warmup: int) -> dict:
    """One FLOP-counted (and timed) call, then ``warmup`` untimed and ``repeats`` timed calls; the latency is the
    median of the timed calls, or the counted call's time when ``repeats`` is 0 (networks too slow to run twice)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            start = time.perf_counter()
            fn()
            _sync(device)
            counted_time = time.perf_counter() - start
        for _ in range(warmup):
            fn()
        _sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
    latency = statistics.median(times) if times else counted_time
    return {
        "latency_s": latency,
        "images_per_s": 1.0 / latency,
        "peak_memory_gib": _peak_memory_gib(device),
        "flops": counter.get_total_flops(),
    }


def run(
    archs: list[str], size: int, repeats: int, warmup: int, device: torch.device, methods=SPEED_METHODS
) -> list[dict]:
    """Measure every (architecture, method); returns one record per pair."""
    from magicbokeh.optics import BokehRenderer

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, size, size, generator=generator)
    # A tilted plane in depth with a mid-depth focus: about half of the tile is blurred.
    disparity = torch.linspace(0.0, 1.0, size).view(1, 1, 1, size).expand(1, 1, size, size).contiguous()
    focus, K = torch.tensor([0.5]), torch.tensor([16.0])
    renderer = BokehRenderer()
    records = []
    for arch in archs:
        start = time.perf_counter()
        model = build_random_model(arch, device)
        parameters = sum(p.numel() for p in model.parameters())
        logger.info("%s: built in %.1f s, %.1f M parameters", arch, time.perf_counter() - start, parameters / 1e6)
        for name in methods:
            # One tile of --size: the whole image in one network pass (tiles only matter above the tile size).
            method = build_method(name, model=model, renderer=renderer, pipeline=WHOLE_IMAGE, device=device)
            stats = measure(lambda m=method: m(images, disparity, focus, K), device, repeats, warmup)
            stats.update(arch=arch, method=name, parameters=parameters if name != "bicubic_renderer" else 0)
            logger.info("%s / %s: %.3f s, %.3g GFLOPs", arch, name, stats["latency_s"], stats["flops"] / 1e9)
            records.append(stats)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records


def results_table(records: list[dict], device: torch.device) -> Table:
    """The records with latency and FLOP ratios against the unified model of the same architecture."""
    memory = "peak GPU memory (GiB)" if device.type == "cuda" else "process peak RSS (GiB)"
    columns = ["arch", "method", "latency (s)", "images/s", "× unified latency", "params (M)", "GFLOPs",
               "× unified FLOPs", memory]  # fmt: skip
    unified = {r["arch"]: r for r in records if r["method"] == "model"}
    rows = []
    for r in records:
        base = unified.get(r["arch"])
        time_ratio = r["latency_s"] / base["latency_s"] if base else None
        flop_ratio = r["flops"] / base["flops"] if base and base["flops"] else None
        rows.append(
            [r["arch"], LABELS[r["method"]], r["latency_s"], r["images_per_s"], time_ratio, r["parameters"] / 1e6,
             r["flops"] / 1e9, flop_ratio, r["peak_memory_gib"]]
        )  # fmt: skip
    return Table(columns, rows, ["", "", ".4f", ".3g", ".2f", ".2f", ".4g", ".2f", ".2f"])


def table(records: list[dict], size: int, device: torch.device) -> str:
    """Markdown table (:func:`results_table`) under a line naming the tile, device and torch version."""
    heading = f"Tile {size}×{size}, batch 1, device {device} ({_device_name(device)}), torch {torch.__version__}"
    return heading + "\n\n" + results_table(records, device).markdown()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{torch.get_num_threads()} CPU threads"


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="benchmark.py speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--arch", nargs="+", default=["tiny"], choices=ARCHS, help="architectures to time")
    parser.add_argument("--size", type=int, default=512, help="tile side in pixels (multiple of the model stride)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls per method (median); 0 = time the FLOP-counted call only")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    parser.add_argument("--methods", nargs="+", default=list(SPEED_METHODS), choices=SPEED_METHODS)
    parser.add_argument("--device", default="auto", help="auto (first CUDA device, else cpu), cpu, cuda:0, ...")
    parser.add_argument("--json", type=Path, default=None, help="also write the records to this JSON file")
    add_results_option(parser, "speed")
    args = parser.parse_args(argv)
    if args.repeats < 0 or args.warmup < 0 or args.size < 8:
        raise ParameterError("need --repeats >= 0, --warmup >= 0 and --size >= 8")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    records = run(args.arch, args.size, args.repeats, args.warmup, device, tuple(args.methods))
    print(table(records, args.size, device))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(records, indent=1))
    name = chosen_results_name(args.results)
    if name:
        settings = {"size": args.size, "repeats": args.repeats, "warmup": args.warmup, "device": str(device),
                    "threads": torch.get_num_threads()}  # fmt: skip
        path = write_results(
            name, {"settings": settings, "records": records}, tables={"latency": results_table(records, device)},
            title=f"unified model vs two-stage baselines: one {args.size}×{args.size} tile, batch 1, {device}",
            seed=0,
        )  # fmt: skip
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
