"""The evaluation runner: stage 1 predicts to disk, stage 2 scores from disk, stage 3 reports.

Run directory layout::

    predictions/<method>/seed<k>/<sample id>.png   stage 1 (skips images already on disk: resumable)
    per_image.csv                                  stage 2: one row per (method, seed, sample)
    summary.json                                   stage 2: per method and metric: mean, std, count (+ seeds)
    table.md                                       stage 2: the markdown table (mean, or mean ± std over seeds)
    report.md, plots/, grids/                      stage 3 (:mod:`magicbokeh.evaluation.reports`)

Stage 2 reads only the benchmark folder and ``predictions/``, so it can be rerun alone (other metrics, another
weights folder) without predicting again; rows already in ``per_image.csv`` with every requested column are kept.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from magicbokeh.data.benchmark_index import BenchmarkSample, load_benchmark_index
from magicbokeh.data.io import read_disparity, read_image, write_image
from magicbokeh.data.transforms import resize_images
from magicbokeh.errors import ConfigError, DatasetError, InvalidInputError
from magicbokeh.evaluation.baselines import Method
from magicbokeh.evaluation.measures import controllability, in_focus_psnr, laplacian_variance, out_of_focus_region
from magicbokeh.evaluation.metrics import Metric, get_metric, metric_info
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.progress import progress_bar
from magicbokeh.utils.seeding import sample_generator

logger = get_logger(__name__)

INPUTS = ("lq", "hq")
KEY_COLUMNS = ("method", "seed", "id", "scene", "task", "K", "focus_disparity")
IN_FOCUS_COLUMN = "psnr_in_focus"
SHARPNESS_COLUMN = "oof_laplacian_var"
CONTROLLABILITY = "controllability"
PREDICTIONS = "predictions"


@dataclass(frozen=True)
class SampleData:
    """One benchmark case loaded for a method: every tensor 1×C×H×W at the target size."""

    images: torch.Tensor
    disparity: torch.Tensor
    focus_disparity: torch.Tensor
    K: torch.Tensor
    has_disparity: bool


def load_samples(root: str | os.PathLike, max_samples: int | None = None) -> tuple[dict, list[BenchmarkSample]]:
    """The benchmark's header and its first ``max_samples`` samples (all when None)."""
    header, samples = load_benchmark_index(root)
    if max_samples is not None:
        samples = samples[: int(max_samples)]
    return header, samples


def output_size(sample: BenchmarkSample) -> tuple[int, int]:
    """The size predictions are made and scored at: the target's, else the HQ image's, else the input's."""
    for path in (sample.target, sample.hq, sample.lq):
        if path is not None:
            return tuple(read_image(path).shape[-2:])
    raise DatasetError(f"sample '{sample.id}' has no image")


def load_sample(sample: BenchmarkSample, input_key: str = "lq") -> SampleData:
    """Read a sample's input (``lq``, or ``hq`` for the clean-input check) resized to the output size.

    Without a disparity map (SR benchmarks) the disparity is all zeros and K must be 0, i.e. pure super-resolution.
    """
    if input_key not in INPUTS:
        raise ConfigError(f"benchmark input must be one of {INPUTS}, got '{input_key}'")
    source = sample.lq if input_key == "lq" else sample.hq
    if source is None:
        raise DatasetError(f"sample '{sample.id}' has no '{input_key}' image (needed as the benchmark input)")
    size = output_size(sample)
    images = resize_images(read_image(source).unsqueeze(0), size)
    if sample.disparity is not None:
        disparity = read_disparity(sample.disparity).unsqueeze(0)
        if tuple(disparity.shape[-2:]) != size:
            disparity = torch.nn.functional.interpolate(disparity, size=size, mode="bilinear", align_corners=False)
        disparity = disparity.clamp(0.0, 1.0)
    elif sample.K > 0:
        raise DatasetError(f"sample '{sample.id}' asks for bokeh (K={sample.K}) but has no disparity map")
    else:
        disparity = torch.zeros(1, 1, *size)
    return SampleData(
        images=images,
        disparity=disparity,
        focus_disparity=torch.tensor([sample.focus_disparity]),
        K=torch.tensor([sample.K]),
        has_disparity=sample.disparity is not None,
    )


def method_seeds(method: Method, seeds: Sequence[int]) -> list[int]:
    """Deterministic methods run once (under the first seed); stochastic ones once per seed."""
    return list(seeds) if method.stochastic else list(seeds[:1])


def scene_key(sample: BenchmarkSample) -> str:
    """Samples showing the same content and focus share a key: the builder's ``scene`` field, else the HQ/disparity
    file plus the focus disparity (the controllability measure compares K within a key)."""
    if "scene" in sample.extra:
        base = str(sample.extra["scene"])
    else:
        source = sample.hq or sample.disparity
        base = source.stem if source is not None else sample.id
    return f"{base}@{sample.focus_disparity:.4f}"


def prediction_path(run_dir: Path, method: str, seed: int, sample_id: str) -> Path:
    return run_dir / PREDICTIONS / method / f"seed{seed}" / f"{sample_id}.png"


def predict(
    methods: Sequence[Method],
    samples: Sequence[BenchmarkSample],
    run_dir: str | os.PathLike,
    seeds: Sequence[int] = (0,),
    input_key: str = "lq",
) -> int:
    """Stage 1: write every method's prediction of every sample as PNG; returns how many were computed."""
    run_dir = Path(run_dir)
    computed = 0
    for method in methods:
        for seed in method_seeds(method, seeds):
            todo = [s for s in samples if not prediction_path(run_dir, method.name, seed, s.id).is_file()]
            if len(todo) < len(samples):
                logger.info("%s seed %d: %d of %d already predicted", method.name, seed, len(samples) - len(todo),
                            len(samples))  # fmt: skip
            for sample in progress_bar(todo, desc=f"predict {method.name} seed{seed}", unit="img", leave=False):
                data = load_sample(sample, input_key)
                index = samples.index(sample)
                generator = sample_generator(seed, index, "evaluation")
                output = method(data.images, data.disparity, data.focus_disparity, data.K, generator)
                write_image(prediction_path(run_dir, method.name, seed, sample.id), output[0])
                computed += 1
    return computed


def discover_predictions(run_dir: str | os.PathLike) -> list[tuple[str, int]]:
    """(method, seed) pairs present under ``predictions/``, in a stable order."""
    root = Path(run_dir) / PREDICTIONS
    if not root.is_dir():
        raise DatasetError(f"no predictions in '{root}': run the predict stage first")
    pairs = []
    for method_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for seed_dir in sorted(p for p in method_dir.iterdir() if p.is_dir() and p.name.startswith("seed")):
            pairs.append((method_dir.name, int(seed_dir.name.removeprefix("seed"))))
    return pairs


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: list[dict], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _format(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def _score_one(
    sample: BenchmarkSample, prediction: torch.Tensor, data: SampleData, metrics: Sequence[Metric]
) -> dict[str, float]:
    """Every per-image metric and measure of one prediction (NaN where it does not apply)."""
    target = read_image(sample.target).unsqueeze(0) if sample.target is not None else None
    scores: dict[str, float] = {}
    for metric in metrics:
        if metric.info.needs_reference and target is None:
            scores[metric.name] = math.nan
            continue
        if target is not None and target.shape != prediction.shape:
            raise InvalidInputError(
                f"prediction of '{sample.id}' is {tuple(prediction.shape[-2:])}, target {tuple(target.shape[-2:])}"
            )
        scores[metric.name] = float(metric(prediction, target if metric.info.needs_reference else None)[0])
    scores[IN_FOCUS_COLUMN] = math.nan
    scores[SHARPNESS_COLUMN] = math.nan
    if data.has_disparity:
        if sample.hq is not None:
            hq = resize_images(read_image(sample.hq).unsqueeze(0), tuple(prediction.shape[-2:]))
            scores[IN_FOCUS_COLUMN] = float(
                in_focus_psnr(prediction, hq, data.disparity, data.focus_disparity, data.K)[0]
            )
        region = out_of_focus_region(data.disparity, data.focus_disparity)
        scores[SHARPNESS_COLUMN] = float(laplacian_variance(prediction, region)[0])
    return scores


def score(
    run_dir: str | os.PathLike,
    samples: Sequence[BenchmarkSample],
    metric_names: Sequence[str],
    *,
    input_key: str = "lq",
    metric_kwargs: dict | None = None,
    benchmark_name: str = "benchmark",
) -> dict:
    """Stage 2: score every prediction on disk; writes per_image.csv, summary.json, table.md; returns the summary."""
    run_dir = Path(run_dir)
    pairs = discover_predictions(run_dir)
    metric_kwargs = dict(metric_kwargs or {})
    infos = [metric_info(name) for name in metric_names]
    per_image = [get_metric(info.name, **metric_kwargs) for info in infos if info.per_image]
    set_metrics = [get_metric(info.name, **metric_kwargs) for info in infos if not info.per_image]
    value_columns = [m.name for m in per_image] + [IN_FOCUS_COLUMN, SHARPNESS_COLUMN]
    columns = list(KEY_COLUMNS) + value_columns
    csv_path = run_dir / "per_image.csv"
    # Resume: keep rows that already hold every requested column (delete per_image.csv to rescore everything,
    # e.g. after predictions were regenerated).
    cached = {
        (row["method"], int(row["seed"]), row["id"]): row
        for row in _read_rows(csv_path)
        if all(column in row for column in columns)
    }
    rows: list[dict] = []
    for method, seed in pairs:
        for sample in progress_bar(samples, desc=f"score {method} seed{seed}", unit="img", leave=False):
            path = prediction_path(run_dir, method, seed, sample.id)
            if not path.is_file():
                raise DatasetError(f"prediction '{path}' is missing: rerun the predict stage (it resumes)")
            key = (method, seed, sample.id)
            if key in cached:
                rows.append(cached[key])
                continue
            prediction = read_image(path).unsqueeze(0)
            values = _score_one(sample, prediction, load_sample(sample, input_key), per_image)
            row = {"method": method, "seed": seed, "id": sample.id, "scene": scene_key(sample), "task": sample.task,
                   "K": sample.K, "focus_disparity": sample.focus_disparity}  # fmt: skip
            row.update({name: _format(value) for name, value in values.items()})
            rows.append(row)
        # Save progress after every (method, seed), keeping cached rows not reached yet.
        done = {(r["method"], int(r["seed"]), r["id"]) for r in rows}
        _write_rows(csv_path, rows + [r for k, r in cached.items() if k not in done], columns)
    _write_rows(csv_path, rows, columns)
    set_scores = _score_sets(run_dir, pairs, samples, set_metrics)
    summary = summarize(rows, value_columns, set_scores, benchmark_name=benchmark_name)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")
    atomic_write_text(run_dir / "table.md", markdown_table(summary))
    return summary


def _score_sets(run_dir: Path, pairs, samples, set_metrics: Sequence[Metric]) -> dict:
    """Set metrics (FID) per (method, seed): the prediction folder against the folder holding the targets."""
    if not set_metrics:
        return {}
    target_dirs = {s.target.parent for s in samples if s.target is not None}
    if len(target_dirs) != 1:
        logger.warning("set metrics skipped: targets are not in exactly one folder (%d folders)", len(target_dirs))
        return {}
    target_dir = next(iter(target_dirs))
    results: dict = defaultdict(dict)
    for method, seed in pairs:
        for metric in set_metrics:
            folder = run_dir / PREDICTIONS / method / f"seed{seed}"
            results[(method, seed)][metric.name] = metric.score_folders(folder, target_dir)
    return results


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def summarize(rows: Sequence[dict], value_columns: Sequence[str], set_scores: dict, *, benchmark_name: str) -> dict:
    """Aggregate rows: per method and metric, the mean/std/count over images; with several seeds also the mean and
    std of the per-seed means (``seed_mean``, ``seed_std``). Controllability is one value per (method, seed)."""
    by_method: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_method[row["method"]][int(row["seed"])].append(row)
    methods = {}
    for method, seeds in by_method.items():
        entry = {}
        for column in value_columns:
            per_seed = [np.array([_number(r[column]) for r in seed_rows]) for seed_rows in seeds.values()]
            finite = [values[np.isfinite(values)] for values in per_seed]
            pooled = np.concatenate(finite) if finite else np.array([])
            if pooled.size == 0:
                continue
            seed_means = [float(v.mean()) for v in finite if v.size]
            entry[column] = _stats(pooled, seed_means)
        control = []
        for seed_rows in seeds.values():
            bokeh = [r for r in seed_rows if r["task"] == "bokeh"]
            sharpness = [_number(r[SHARPNESS_COLUMN]) for r in bokeh]
            control.append(controllability([_number(r["K"]) for r in bokeh], sharpness, [r["scene"] for r in bokeh]))
        control = [c for c in control if math.isfinite(c)]
        if control:
            entry[CONTROLLABILITY] = _stats(np.array(control), control, count=len(control))
        images = len(next(iter(seeds.values())))
        for name in sorted({name for scores in set_scores.values() for name in scores}):
            values = [set_scores[(method, s)][name] for s in seeds if name in set_scores.get((method, s), {})]
            if values:
                entry[name] = _stats(np.array(values), values, count=images)
        methods[method] = entry
    return {"benchmark": benchmark_name, "methods": methods}


def _stats(values: np.ndarray, seed_means: Sequence[float], count: int | None = None) -> dict:
    stats = {
        "mean": _clean(float(np.mean(seed_means))),
        "std": _clean(float(values.std())) if values.size > 1 else 0.0,
        "count": int(count if count is not None else values.size),
        "seeds": len(seed_means),
    }
    if len(seed_means) > 1:
        stats["seed_std"] = _clean(float(np.std(seed_means)))
    return stats


def column_direction(column: str) -> str:
    """↑ or ↓ for a summary column (metrics from the registry; measures by definition)."""
    if column == CONTROLLABILITY:
        return "↓"  # more negative = blur follows K
    if column in (IN_FOCUS_COLUMN,):
        return "↑"
    if column == SHARPNESS_COLUMN:
        return ""
    return "↑" if metric_info(column).higher_is_better else "↓"


def markdown_table(summary: dict) -> str:
    """One row per method, one column per metric: ``mean`` or ``mean ± std`` across seeds."""
    methods = summary["methods"]
    columns: list[str] = []
    for entry in methods.values():
        columns.extend(c for c in entry if c not in columns)
    header = "| method | " + " | ".join(f"{c} {column_direction(c)}".strip() for c in columns) + " |"
    lines = [f"Benchmark: {summary['benchmark']}", "", header, "|---" * (len(columns) + 1) + "|"]
    for method, entry in methods.items():
        cells = []
        for column in columns:
            stats = entry.get(column)
            if stats is None or stats["mean"] is None:
                cells.append("–")
            elif "seed_std" in stats:
                cells.append(f"{stats['mean']:.4g} ± {stats['seed_std']:.2g}")
            else:
                cells.append(f"{stats['mean']:.4g}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
