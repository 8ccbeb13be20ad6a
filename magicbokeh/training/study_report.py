"""A study's table: variant × metric, mean ± std over seeds, the paper's value beside it where there is one.

Each cell aggregates one number per training seed, the benchmark mean of that seed's final model: the mean of those
numbers and their sample standard deviation (n − 1 in the denominator; "–" with one seed). The paper's value is
shown only when the study was scored on the benchmark the paper's table comes from (``paper.benchmark``): a number
from another benchmark is not comparable. Outputs (all in the study folder, plus the results file and the figure
copy when asked):

    table.md    the Markdown table (+ the variants' overrides and the paper rows they correspond to)
    table.csv   one row per variant: mean, std, seeds and paper value per metric
    table.png   bar plot, one panel (bar group) per metric, one bar per variant, error bars = std over seeds
    results/<name>.json   the same figures through :func:`magicbokeh.utils.results.write_results`, with a second
                          table ``time``: the wall time of each stage summed over the study's invocations
                          (``<out_dir>/timing.jsonl``, :func:`magicbokeh.training.study.read_timing`)
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicbokeh.evaluation.runner import column_direction
from magicbokeh.utils.files import atomic_path, atomic_write_text
from magicbokeh.utils.results import Table, write_results

if TYPE_CHECKING:
    from magicbokeh.training.study import Study


def aggregate(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample std of one metric's per-seed values (missing values are left out and counted)."""
    present = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return {
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) > 1 else None,
        "seeds": len(present),
        "values": [None if v is None else float(v) for v in values],
    }


def _decimals(value: float) -> int:
    """2 decimals for values of 10 and more (dB, FID), 3 below (SSIM, LPIPS, correlations)."""
    return 2 if abs(value) >= 10 else 3


def _number(value: float | None, decimals: int | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.{_decimals(value) if decimals is None else decimals}f}"


def cell(stats: dict[str, Any]) -> str:
    """``mean ± std`` with the mean's decimals (the mean alone when only one seed gave a value)."""
    if stats["mean"] is None:
        return "–"
    if stats["std"] is None:
        return _number(stats["mean"])
    decimals = _decimals(stats["mean"])
    return f"{_number(stats['mean'], decimals)} ± {_number(stats['std'], decimals)}"


def study_figures(study: Study, scores: dict[str, dict[int, dict[str, float | None]]]) -> dict[str, Any]:
    """Everything the table shows, as data (the results file's ``figures``)."""
    paper = study.paper or {}
    comparable = paper.get("benchmark") == study.benchmark
    rows = paper.get("rows", {})
    variants = {}
    for variant in study.variants:
        per_seed = scores[variant.name]
        row = rows.get(variant.paper_row) if variant.paper_row else None
        variants[variant.name] = {
            "train_overrides": list(variant.train),
            "eval_overrides": list(variant.evaluate),
            "description": variant.description,
            "paper_row": variant.paper_row,
            "paper_label": row["label"] if row else None,
            "metrics": {
                metric: {
                    **aggregate([per_seed[seed][metric] for seed in study.seeds]),
                    "paper": (row["metrics"].get(metric) if row and comparable else None),
                }
                for metric in study.metrics
            },
        }
    return {
        "study": study.name,
        "scale": study.scale,
        "benchmark": study.benchmark,
        "experiment": study.experiment,
        "seeds": list(study.seeds),
        "metrics": list(study.metrics),
        "paper_source": paper.get("source"),
        "paper_comparable": comparable,
        "variants": variants,
    }


TIMED_STAGES = ("prepare", "train", "evaluate")


def study_time(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall time per stage summed over invocations (interrupted ones included: their work counts), the number of
    invocations that did work in each, and the total."""
    stages = {
        stage: {
            "seconds": sum(r["seconds"] for r in records if r["stage"] == stage),
            "invocations": sum(1 for r in records if r["stage"] == stage),
            "interrupted": sum(1 for r in records if r["stage"] == stage and not r["completed"]),
        }
        for stage in TIMED_STAGES
    }
    return {"stages": stages, "total_seconds": sum(entry["seconds"] for entry in stages.values())}


def time_table(time: dict[str, Any]) -> Table:
    """The results :class:`Table` ``time``: one row per stage and the total, in minutes."""
    rows = [
        [stage, entry["invocations"], entry["interrupted"], entry["seconds"] / 60]
        for stage, entry in time["stages"].items()
    ]
    rows.append(["total", None, None, time["total_seconds"] / 60])
    return Table(["stage", "invocations", "of them interrupted", "wall time (min)"], rows, ["", "d", "d", ".1f"])


def study_table(figures: dict[str, Any]) -> Table:
    """The results :class:`Table`: one row per variant, ``mean ± std`` per metric (+ the paper's value)."""
    metrics = figures["metrics"]
    with_paper = [m for m in metrics if any(v["metrics"][m]["paper"] is not None for v in figures["variants"].values())]
    columns = ["variant", "paper row"]
    for metric in metrics:
        columns.append(f"{metric} {column_direction(metric)}".strip())
        if metric in with_paper:
            columns.append(f"{metric} (paper)")
    rows = []
    for name, variant in figures["variants"].items():
        row = [name, variant["paper_label"] or "–"]
        for metric in metrics:
            row.append(cell(variant["metrics"][metric]))
            if metric in with_paper:
                row.append(_number(variant["metrics"][metric]["paper"]))
        rows.append(row)
    return Table(columns, rows)


def _csv(figures: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    metrics = figures["metrics"]
    header = ["variant", "paper_row"]
    for metric in metrics:
        header += [f"{metric}_mean", f"{metric}_std", f"{metric}_seeds", f"{metric}_paper"]
    writer.writerow(header)
    for name, variant in figures["variants"].items():
        line = [name, variant["paper_row"] or ""]
        for metric in metrics:
            stats = variant["metrics"][metric]
            line += ["" if stats[key] is None else stats[key] for key in ("mean", "std", "seeds", "paper")]
        writer.writerow(line)
    return buffer.getvalue()


def _markdown(study: Study, figures: dict[str, Any], table: Table) -> str:
    seeds = ", ".join(str(seed) for seed in figures["seeds"])
    lines = [
        f"# {study.title}",
        "",
        f"Study `{study.name}` at scale `{study.scale}`: training experiment `{study.experiment}`, benchmark "
        f"`{study.benchmark}`, seeds {seeds}. Each cell: mean ± sample std over the seeds of the benchmark mean of "
        "each seed's final model.",
        "",
        table.markdown(),
    ]
    if figures["paper_source"] and not figures["paper_comparable"]:
        lines += [f"The paper's values ({figures['paper_source']}) are not shown: this study was scored on "
                  f"`{study.benchmark}`, not on the paper's benchmark.", ""]  # fmt: skip
    lines += ["| variant | training overrides | evaluation overrides |", "|---|---|---|"]
    for name, variant in figures["variants"].items():
        train = " ".join(f"`{o}`" for o in variant["train_overrides"]) or "(the experiment as is)"
        evaluate = " ".join(f"`{o}`" for o in variant["eval_overrides"]) or "–"
        lines.append(f"| {name} | {train} | {evaluate} |")
    if study.notes:
        lines += ["", study.notes]
    return "\n".join(lines) + "\n"


def plot_study(figures: dict[str, Any], path: str | os.PathLike) -> Path:
    """Bar plot: one panel per metric (its direction in the title), one bar per variant with the std over seeds as
    error bar and each seed's value as a dot; the paper's value as a marker where shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, names = figures["metrics"], list(figures["variants"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.0 + 1.1 * len(names) * len(metrics), 3.6), squeeze=False)
    colours = plt.get_cmap("tab10")
    for axis, metric in zip(axes[0], metrics, strict=True):
        for position, name in enumerate(names):
            stats = figures["variants"][name]["metrics"][metric]
            if stats["mean"] is None:
                continue
            axis.bar(position, stats["mean"], yerr=stats["std"] or 0.0, capsize=4, color=colours(position % 10),
                     alpha=0.8)  # fmt: skip
            seeds = [v for v in stats["values"] if v is not None]
            axis.plot([position] * len(seeds), seeds, "k.", markersize=4)
            if stats["paper"] is not None:
                axis.plot(position, stats["paper"], "r_", markersize=18, markeredgewidth=2, label="paper")
        values = [v for name in names for v in figures["variants"][name]["metrics"][metric]["values"] if v is not None]
        if values:  # bars of close values: zoom on their range so the differences are visible
            low, high = min(values), max(values)
            margin = 0.5 * max(high - low, 1e-3 * max(abs(high), 1.0))
            axis.set_ylim(low - 2 * margin, high + 2 * margin)
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
        axis.set_title(f"{metric} {column_direction(metric)}".strip())
        axis.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{figures['study']} ({figures['scale']}, {figures['benchmark']}): mean ± std over "
                 f"{len(figures['seeds'])} seeds, dots = seeds, y axes zoomed to the values")  # fmt: skip
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
    return path


def write_study_report(
    study: Study,
    scores: dict[str, dict[int, dict[str, float | None]]],
    timing: list[dict[str, Any]] | None = None,
    *,
    results: str | None = None,
    figure: str | os.PathLike | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Write table.md, table.csv and table.png into the study folder, the results file ``results`` (under
    ``results/``) and a copy of the plot at ``figure``; returns the figures."""
    figures = study_figures(study, scores)
    figures["time"] = study_time(timing or [])
    table = study_table(figures)
    out = study.out_dir
    atomic_write_text(out / "table.md", _markdown(study, figures, table))
    atomic_write_text(out / "table.csv", _csv(figures))
    plot = plot_study(figures, out / "table.png")
    print(f"\n{_markdown(study, figures, table)}\n(saved in {out / 'table.md'}, table.csv, table.png)")
    if figure is not None:
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(figure)) as temporary:
            shutil.copyfile(plot, temporary)
        figures["figure"] = str(figure)
    if results is not None:
        path = write_results(
            results, figures, title=f"{study.title} ({study.scale} scale, {study.benchmark})",
            tables={"table": table, "time": time_table(figures["time"])}, command=command, seed=None,
            notes=study.notes or None,
        )  # fmt: skip
        print(f"results: {path}")
    return figures
