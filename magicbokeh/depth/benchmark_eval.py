"""Depth evaluation on NYUv2 / KITTI in the paper's two scenarios (Table S.1): clean input and degraded input.

For each test image the depth model predicts disparity on the clean photo and on a Real-ESRGAN-degraded copy (the
same degradation the student was distilled under, seeded per image so every model sees identical inputs); both
are scored with :func:`magicbokeh.depth.metrics.depth_metrics` (scale-and-shift alignment in disparity space, then
AbsRel and δ1 in metric depth over the benchmark's crop and range). "Average" is the mean of the two scenarios.

    python -m magicbokeh.depth.benchmark_eval --dataset nyuv2 --split nyu_test.txt --image-root NYU/ \\
        --size large --weights DAdepth.pth [--limit N] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from magicbokeh.data.depth_benchmarks import SPECS, DepthBenchmarkDataset
from magicbokeh.depth.metrics import depth_metrics
from magicbokeh.utils.cli import exit_on_user_error, set_offline_defaults
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.progress import progress_bar
from magicbokeh.utils.seeding import sample_generator

SCENARIOS = ("clean", "degraded")


@torch.no_grad()
def evaluate_depth_benchmark(model, dataset: DepthBenchmarkDataset, degradation, *, seed: int = 0) -> dict:
    """Mean AbsRel / δ1 over ``dataset`` for clean and degraded inputs, plus their average and the sample count.

    ``model`` has ``predict_disparity(images B×3×H×W) -> B×1×H×W``; ``degradation`` is a callable
    ``(images, generator) -> images`` at the same size (``RealESRGANDegradation`` with ``resize_back``).
    """
    totals = {scenario: {"abs_rel": 0.0, "delta1": 0.0} for scenario in SCENARIOS}
    for index in progress_bar(range(len(dataset)), desc=f"depth eval {dataset.spec.name}", unit="img"):
        sample = dataset[index]
        clean = sample["image"][None]
        inputs = {"clean": clean, "degraded": degradation(clean, sample_generator(seed, index))}
        for scenario, images in inputs.items():
            disparity = model.predict_disparity(images)
            scores = depth_metrics(
                disparity.cpu(), sample["depth"][None], sample["valid"][None], max_depth=dataset.spec.max_depth
            )
            for key in totals[scenario]:
                totals[scenario][key] += float(scores[key][0])
    count = len(dataset)
    results = {scenario: {key: value / count for key, value in metrics.items()} for scenario, metrics in totals.items()}
    results["average"] = {key: (results["clean"][key] + results["degraded"][key]) / 2 for key in ("abs_rel", "delta1")}
    results["count"] = count
    return results


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from magicbokeh.data.degradations import RealESRGANDegradation
    from magicbokeh.depth import build_depth_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(SPECS), required=True)
    parser.add_argument("--split", required=True, help="split file: '<image> <depth> [focal]' per line")
    parser.add_argument("--image-root", required=True)
    parser.add_argument("--depth-root", default=None, help="defaults to --image-root")
    parser.add_argument("--size", default="large", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--weights", default=None, help="DA-V2 .pth / .safetensors / HF folder / our student")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    set_offline_defaults()
    dataset = DepthBenchmarkDataset(args.dataset, args.split, args.image_root, args.depth_root, limit=args.limit)
    model = build_depth_model(args.size, weights=args.weights)
    results = evaluate_depth_benchmark(model, dataset, RealESRGANDegradation(), seed=args.seed)
    for scenario in (*SCENARIOS, "average"):
        print(f"{scenario:>9}: AbsRel {results[scenario]['abs_rel']:.4f}  δ1 {results[scenario]['delta1']:.4f}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
