"""The evaluation runner: stage 1 predicts to disk, stage 2 scores from disk, stage 3 reports.

Run directory layout::

    manifest.json                                  what the results were made from (magicbokeh.evaluation.manifest)
    predictions/<method>/seed<k>/<sample id>.png   stage 1 (skips images already on disk: resumable)
    disparity/<sample id>.npy                      stage 1: disparity estimated by the depth model (cached)
    per_image.csv                                  stage 2: one row per (method, seed, sample)
    summary.json                                   stage 2: per method and metric: mean, std, count (+ seeds)
    table.md                                       stage 2: the markdown table (+ the paper's row, when known)
    report.md, plots/, grids/                      stage 3 (:mod:`magicbokeh.evaluation.reports`)

Stage 1 can be split over processes: process ``i`` of ``n`` predicts samples ``i, i+n, …``; every prediction depends
only on its sample (its generator is seeded by the sample's position in the benchmark), so the files are those of a
one-process run. Stage 2 reads only the benchmark folder, the cached disparity and ``predictions/``, so it can be
rerun alone (other metrics, another weights folder) without predicting again; rows already in ``per_image.csv``
with every requested column are kept. Metrics are computed on batches of same-sized images on the metric device.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from magicbokeh.data.benchmark_index import BenchmarkSample, check_sample_id, load_benchmark_index
from magicbokeh.data.io import read_image, write_image
from magicbokeh.data.transforms import resize_images
from magicbokeh.errors import ConfigError, DatasetError, InvalidInputError
from magicbokeh.evaluation.baselines import Case, Method
from magicbokeh.evaluation.inputs import SampleInputs
from magicbokeh.evaluation.measures import controllability, in_focus_psnr, laplacian_variance, out_of_focus_region
from magicbokeh.evaluation.metrics import Metric, get_metric, metric_info
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.progress import progress_bar
from magicbokeh.utils.seeding import sample_generator

logger = get_logger(__name__)

KEY_COLUMNS = ("method", "seed", "id", "scene", "task", "K", "focus_disparity")
IN_FOCUS_COLUMN = "psnr_in_focus"
SHARPNESS_COLUMN = "oof_laplacian_var"
CONTROLLABILITY = "controllability"
PREDICTIONS = "predictions"


def load_samples(root: str | os.PathLike, max_samples: int | None = None) -> tuple[dict, list[BenchmarkSample]]:
    """The benchmark's header and its first ``max_samples`` samples (all when None)."""
    if max_samples is not None and int(max_samples) < 1:
        raise ConfigError(
            f"benchmark.max_samples={max_samples} selects no sample: give a positive number, or null for all"
        )
    header, samples = load_benchmark_index(root)
    if max_samples is not None:
        samples = samples[: int(max_samples)]
    return header, samples


def method_seeds(method: Method, seeds: Sequence[int]) -> list[int]:
    """Deterministic methods run once (under the first seed); stochastic ones once per seed."""
    return list(seeds) if method.stochastic else list(seeds[:1])


def scene_key(sample: BenchmarkSample, focus_disparity: float) -> str:
    """Samples showing the same content and focus share a key: the builder's ``scene`` field, else the HQ/disparity
    file plus the focus disparity (the controllability measure compares K within a key)."""
    if "scene" in sample.extra:
        base = str(sample.extra["scene"])
    else:
        source = sample.hq or sample.disparity or sample.lq
        base = source.stem
    return f"{base}@{focus_disparity:.4f}"


def prediction_path(run_dir: Path, method: str, seed: int, sample_id: str) -> Path:
    return Path(run_dir) / PREDICTIONS / method / f"seed{seed}" / f"{check_sample_id(sample_id)}.png"


def shard(samples: Sequence[BenchmarkSample], process_index: int = 0, num_processes: int = 1):
    """``(position in the benchmark, sample)`` pairs of one process: every ``num_processes``-th sample."""
    if not 0 <= process_index < num_processes:
        raise ConfigError(f"process {process_index} of {num_processes} does not exist")
    return [(index, sample) for index, sample in enumerate(samples) if index % num_processes == process_index]


def predict(
    methods: Sequence[Method],
    samples: Sequence[BenchmarkSample],
    run_dir: str | os.PathLike,
    inputs: SampleInputs,
    seeds: Sequence[int] = (0,),
    *,
    process_index: int = 0,
    num_processes: int = 1,
) -> int:
    """Stage 1: write every method's prediction of this process's samples as PNG; returns how many were computed.

    Each sample's input is prepared once (disparity estimated or read from the cache, focus chosen) and shared by
    the methods; samples whose predictions all exist are skipped.
    """
    run_dir = Path(run_dir)
    computed = skipped = 0
    mine = shard(samples, process_index, num_processes)
    label = "predict" if num_processes == 1 else f"predict (process {process_index + 1}/{num_processes})"
    for index, sample in progress_bar(mine, desc=label, unit="sample", leave=False):
        todo = [
            (method, seed)
            for method in methods
            for seed in method_seeds(method, seeds)
            if not prediction_path(run_dir, method.name, seed, sample.id).is_file()
        ]
        if not todo and inputs.is_cached(sample):
            skipped += 1
            continue
        case = inputs.case(sample, estimate=True)
        for method, seed in todo:
            output = method.run(case, sample_generator(seed, index, "evaluation"))
            write_image(prediction_path(run_dir, method.name, seed, sample.id), output[0])
            computed += 1
    logger.info("process %d of %d: %d prediction(s) made for %d sample(s), %d sample(s) already complete",
                process_index + 1, num_processes, computed, len(mine), skipped)  # fmt: skip
    if inputs.estimated or inputs.reused:
        logger.info("disparity: %d estimated by the depth model, %d read from the cache", inputs.estimated,
                    inputs.reused)  # fmt: skip
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
    if not pairs:
        raise DatasetError(f"no predictions in '{root}': run the predict stage first")
    return pairs


def read_rows(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
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


def _measures(sample: BenchmarkSample, prediction: torch.Tensor, case: Case) -> dict[str, float]:
    """The bokeh measures of one prediction (NaN where they do not apply: no disparity, or no HQ image)."""
    scores = {IN_FOCUS_COLUMN: math.nan, SHARPNESS_COLUMN: math.nan}
    if not case.has_disparity:
        return scores
    disparity = case.prepared.disparity_out
    if sample.hq is not None:
        hq = resize_images(read_image(sample.hq).unsqueeze(0), tuple(prediction.shape[-2:]))
        scores[IN_FOCUS_COLUMN] = float(in_focus_psnr(prediction, hq, disparity, case.focus_disparity, case.K)[0])
    region = out_of_focus_region(disparity, case.focus_disparity)
    scores[SHARPNESS_COLUMN] = float(laplacian_variance(prediction, region)[0])
    return scores


def _metric_scores(
    metrics: Sequence[Metric], predictions: list[torch.Tensor], targets: list[torch.Tensor | None], ids: list[str]
) -> list[dict[str, float]]:
    """Every per-image metric of a list of predictions, run on batches of same-sized images."""
    scores: list[dict[str, float]] = [{} for _ in predictions]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for position, prediction in enumerate(predictions):
        target = targets[position]
        if target is not None and target.shape != prediction.shape:
            raise InvalidInputError(
                f"prediction of '{ids[position]}' is {tuple(prediction.shape[-2:])}, target {tuple(target.shape[-2:])}"
            )
        groups[(tuple(prediction.shape), target is not None)].append(position)
    for (_, has_target), positions in groups.items():
        batch = torch.cat([predictions[p] for p in positions])
        references = torch.cat([targets[p] for p in positions]) if has_target else None
        for metric in metrics:
            if metric.info.needs_reference and references is None:
                values = [math.nan] * len(positions)
            else:
                values = metric(batch, references if metric.info.needs_reference else None).tolist()
            for position, value in zip(positions, values, strict=True):
                scores[position][metric.name] = float(value)
    return scores


def score(
    run_dir: str | os.PathLike,
    samples: Sequence[BenchmarkSample],
    metric_names: Sequence[str],
    inputs: SampleInputs,
    *,
    metric_kwargs: dict | None = None,
    batch_size: int = 8,
    benchmark_name: str = "benchmark",
    reference: dict | None = None,
) -> dict:
    """Stage 2: score every prediction on disk; writes per_image.csv, summary.json, table.md; returns the summary.

    ``reference``: a paper's published row for this benchmark (``configs/benchmark/<name>.yaml: paper``), placed
    beside our numbers in ``table.md``.
    """
    if batch_size < 1:
        raise ConfigError(f"metrics.batch_size must be ≥ 1, got {batch_size}")
    run_dir = Path(run_dir)
    pairs = discover_predictions(run_dir)
    metric_kwargs = dict(metric_kwargs or {})
    infos = [metric_info(name) for name in metric_names]
    per_image = [get_metric(info.name, **metric_kwargs) for info in infos if info.per_image]
    set_metrics = [get_metric(info.name, **metric_kwargs) for info in infos if not info.per_image]
    value_columns = [m.name for m in per_image] + [IN_FOCUS_COLUMN, SHARPNESS_COLUMN]
    columns = list(KEY_COLUMNS) + value_columns
    csv_path = run_dir / "per_image.csv"
    # Resume: keep rows that already hold every requested column (the manifest guarantees they were made from the
    # same predictions and scoring settings).
    cached = {
        (row["method"], int(row["seed"]), row["id"]): row
        for row in read_rows(csv_path)
        if all(column in row for column in columns)
    }
    for method, seed in pairs:
        missing = [s.id for s in samples if not prediction_path(run_dir, method, seed, s.id).is_file()]
        if missing:
            raise DatasetError(
                f"{len(missing)} prediction(s) of {method} seed {seed} are missing (e.g. "
                f"'{prediction_path(run_dir, method, seed, missing[0])}'): rerun the predict stage (it resumes)"
            )
    computed: dict[tuple[str, int, str], dict] = {}
    chunks = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    for chunk in progress_bar(chunks, desc="score", unit="batch", leave=False):
        todo = {(m, s): [x for x in chunk if (m, s, x.id) not in cached] for m, s in pairs}
        if not any(todo.values()):
            continue
        needed = {x.id for waiting in todo.values() for x in waiting}
        cases = {x.id: inputs.case(x, estimate=False) for x in chunk if x.id in needed}
        targets = {x.id: read_image(x.target).unsqueeze(0) if x.target is not None else None for x in chunk}
        for (method, seed), waiting in todo.items():
            if not waiting:
                continue
            predictions = [read_image(prediction_path(run_dir, method, seed, x.id)).unsqueeze(0) for x in waiting]
            values = _metric_scores(per_image, predictions, [targets[x.id] for x in waiting], [x.id for x in waiting])
            for sample, prediction, metric_values in zip(waiting, predictions, values, strict=True):
                case = cases[sample.id]
                metric_values.update(_measures(sample, prediction, case))
                row = {"method": method, "seed": seed, "id": sample.id,
                       "scene": scene_key(sample, case.focus_disparity), "task": sample.task, "K": sample.K,
                       "focus_disparity": case.focus_disparity}  # fmt: skip
                row.update({name: _format(value) for name, value in metric_values.items()})
                computed[(method, seed, sample.id)] = row
        # Save progress after every batch, keeping cached rows not reached yet.
        _write_rows(csv_path, list(cached.values()) + list(computed.values()), columns)
    rows = [
        computed.get((method, seed, sample.id)) or cached[(method, seed, sample.id)]
        for method, seed in pairs
        for sample in samples
    ]
    _write_rows(csv_path, rows, columns)
    set_scores = _score_sets(run_dir, pairs, samples, set_metrics)
    summary = summarize(rows, value_columns, set_scores, benchmark_name=benchmark_name, reference=reference)
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


def summarize(
    rows: Sequence[dict],
    value_columns: Sequence[str],
    set_scores: dict,
    *,
    benchmark_name: str,
    reference: dict | None = None,
) -> dict:
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
    summary = {"benchmark": benchmark_name, "methods": methods}
    if reference:
        summary["reference"] = reference
    return summary


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


def _cell(stats: dict | None) -> str:
    if stats is None or stats["mean"] is None:
        return "–"
    if "seed_std" in stats:
        return f"{stats['mean']:.4g} ± {stats['seed_std']:.2g}"
    return f"{stats['mean']:.4g}"


def markdown_table(summary: dict) -> str:
    """One row per method, one column per metric: ``mean`` or ``mean ± std`` across seeds; then, when the summary
    holds a paper's ``reference`` row, our method beside it for every metric both have, with the difference."""
    methods = summary["methods"]
    columns: list[str] = []
    for entry in methods.values():
        columns.extend(c for c in entry if c not in columns)
    header = "| method | " + " | ".join(f"{c} {column_direction(c)}".strip() for c in columns) + " |"
    lines = [f"Benchmark: {summary['benchmark']}", "", header, "|---" * (len(columns) + 1) + "|"]
    for method, entry in methods.items():
        lines.append(f"| {method} | " + " | ".join(_cell(entry.get(column)) for column in columns) + " |")
    reference = summary.get("reference")
    if reference:
        lines += ["", *reference_table(summary, reference)]
    return "\n".join(lines) + "\n"


def reference_table(summary: dict, reference: dict) -> list[str]:
    """Lines of the comparison with a published row (``reference``: ``source``, ``row``, ``method`` = ours,
    ``metrics`` = {our metric name: published value})."""
    ours = reference.get("method", "model")
    entry = summary["methods"].get(ours, {})
    shared = [name for name in reference.get("metrics", {}) if entry.get(name, {}).get("mean") is not None]
    title = f"Against the paper ({reference.get('source', 'published values')})"
    if not shared:
        return [f"{title}: no metric of the published row was scored for `{ours}` (e.g. metrics=paper)."]
    lines = [
        f"{title}:",
        "",
        f"| metric | {ours} (ours) | {reference.get('row', 'paper')} (paper) | ours − paper |",
        "|---|---|---|---|",
    ]
    for name in shared:
        mine, published = entry[name]["mean"], float(reference["metrics"][name])
        lines.append(f"| {name} {column_direction(name)} | {mine:.4g} | {published:.4g} | {mine - published:+.4g} |")
    return lines
