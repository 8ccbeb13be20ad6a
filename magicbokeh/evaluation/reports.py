"""Stage 3 of the runner: plots, image grids and ``report.md`` from the scored run directory.

- ``plots/<metric>_vs_K.png``: mean metric per K value, one line per method (bokeh samples only);
- ``plots/<metric>_bars.png``: one bar per method (error bar: std over seeds, else over images);
- ``grids/<sample id>.png``: input | every method | target, side by side;
- ``report.md``: the table and links to all of the above.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters
import matplotlib.pyplot as plt
import numpy as np

from magicbokeh.data.benchmark_index import BenchmarkSample
from magicbokeh.data.io import read_image, tensor_to_uint8_array
from magicbokeh.data.transforms import resize_images
from magicbokeh.evaluation.runner import (
    CONTROLLABILITY,
    column_direction,
    discover_predictions,
    markdown_table,
    prediction_path,
)
from magicbokeh.utils.files import atomic_path, atomic_write_text
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def plot_metric_vs_K(rows: Sequence[dict], column: str, path: Path) -> Path | None:
    """Mean of ``column`` per K for each method over the bokeh samples; None when there is nothing to draw."""
    table: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        value = float(row[column]) if row.get(column) not in (None, "") else math.nan
        if row["task"] == "bokeh" and math.isfinite(value):
            table[row["method"]][float(row["K"])].append(value)
    if not table or all(len(by_K) < 2 for by_K in table.values()):
        return None
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for method, by_K in sorted(table.items()):
        Ks = sorted(by_K)
        axis.plot(Ks, [np.mean(by_K[K]) for K in Ks], marker="o", label=method)
    axis.set_xlabel("K (blur strength)")
    axis.set_ylabel(f"{column} {column_direction(column)}".strip())
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    return _save(figure, path)


def plot_bars(summary: dict, column: str, path: Path) -> Path | None:
    """One bar per method for ``column`` of the summary."""
    names, means, errors = [], [], []
    for method, entry in summary["methods"].items():
        stats = entry.get(column)
        if stats is None or stats["mean"] is None:
            continue
        names.append(method)
        means.append(stats["mean"])
        errors.append(stats.get("seed_std", stats["std"]) or 0.0)
    if not names:
        return None
    figure, axis = plt.subplots(figsize=(1.2 + 0.9 * len(names), 3.5))
    axis.bar(names, means, yerr=errors, capsize=3, color="tab:blue", alpha=0.8)
    axis.set_ylabel(f"{column} {column_direction(column)}".strip())
    axis.tick_params(axis="x", rotation=30, labelsize=8)
    axis.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def image_grid(
    sample: BenchmarkSample,
    run_dir: Path,
    pairs: Sequence[tuple[str, int]],
    input_key: str,
    path: Path,
    focus_disparity: float | None = None,
) -> Path:
    """input | methods (first seed of each) | target for one sample, labelled with its K and the focus used."""
    target_path = sample.target or sample.hq
    reference = read_image(target_path) if target_path is not None else None
    source = read_image(sample.lq if input_key == "lq" else sample.hq)
    size = tuple(reference.shape[-2:]) if reference is not None else tuple(source.shape[-2:])
    panels = [(f"input ({input_key})", resize_images(source.unsqueeze(0), size)[0])]
    seen = set()
    for method, seed in pairs:
        if method in seen:
            continue
        seen.add(method)
        panels.append((method, read_image(prediction_path(run_dir, method, seed, sample.id))))
    if reference is not None:
        panels.append(("target" if sample.target is not None else "HQ", reference))
    figure, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for axis, (title, image) in zip(np.atleast_1d(axes), panels, strict=True):
        axis.imshow(tensor_to_uint8_array(image))
        axis.set_title(title, fontsize=8)
        axis.axis("off")
    focus = focus_disparity if focus_disparity is not None else sample.focus_disparity
    focus_text = f", focus={focus:.2f}" if focus is not None else ""
    figure.suptitle(f"{sample.id}  (K={sample.K:g}{focus_text})", fontsize=9)
    return _save(figure, path)


def write_report(
    run_dir: str | os.PathLike,
    summary: dict,
    rows: Sequence[dict],
    samples: Sequence[BenchmarkSample],
    *,
    input_key: str = "lq",
    num_grid_samples: int = 4,
) -> Path:
    """Write plots, grids and ``report.md`` into ``run_dir``; returns the report's path."""
    run_dir = Path(run_dir)
    pairs = discover_predictions(run_dir)
    columns: list[str] = []
    for entry in summary["methods"].values():
        columns.extend(c for c in entry if c not in columns)
    vs_K, bars = [], []
    for column in columns:
        if column != CONTROLLABILITY:
            plot = plot_metric_vs_K(rows, column, run_dir / "plots" / f"{_safe(column)}_vs_K.png")
            if plot is not None:
                vs_K.append(plot)
        plot = plot_bars(summary, column, run_dir / "plots" / f"{_safe(column)}_bars.png")
        if plot is not None:
            bars.append(plot)
    focus_used = {row["id"]: float(row["focus_disparity"]) for row in rows if row.get("focus_disparity")}
    grids = [
        image_grid(
            sample, run_dir, pairs, input_key, run_dir / "grids" / f"{_safe(sample.id)}.png", focus_used.get(sample.id)
        )
        for sample in _spread(samples, num_grid_samples)
    ]
    lines = [
        f"# Evaluation report: {summary['benchmark']}",
        "",
        f"{len(samples)} samples; methods: {', '.join(sorted({m for m, _ in pairs}))}. Input: `{input_key}`.",
        "Per-image scores: [per_image.csv](per_image.csv); aggregates: [summary.json](summary.json).",
        "",
        markdown_table(summary),
        "`psnr_in_focus`: PSNR inside the in-focus mask (defocus ≤ 0.1) against the all-in-focus HQ image. "
        "`oof_laplacian_var`: Laplacian variance of the luma where |d − d_f| > 0.1. `controllability`: Spearman ρ "
        "between K and that variance within each scene, averaged (−1: blur follows K exactly; 0 or –: K is ignored).",
        "",
        "## Metric vs K",
        "",
        *[f"![{p.stem}](plots/{p.name})" for p in vs_K],
        "",
        "## Per method",
        "",
        *[f"![{p.stem}](plots/{p.name})" for p in bars],
        "",
        "## Image grids (input | methods | target)",
        "",
        *[f"![{p.stem}](grids/{p.name})" for p in grids],
        "",
    ]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(lines))
    logger.info("report written: %s", report)
    return report


def _spread(samples: Sequence[BenchmarkSample], count: int) -> list[BenchmarkSample]:
    """``count`` samples evenly spread over the list (so grids cover several K and scenes)."""
    if count <= 0 or not samples:
        return []
    if count >= len(samples):
        return list(samples)
    picks = np.linspace(0, len(samples) - 1, count).round().astype(int)
    return [samples[i] for i in sorted(set(picks.tolist()))]
