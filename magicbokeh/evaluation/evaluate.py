"""One call for the whole evaluation (what ``scripts/evaluate.py`` runs once its config is turned into objects)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from magicbokeh.errors import ConfigError
from magicbokeh.evaluation.baselines import Method
from magicbokeh.evaluation.reports import write_report
from magicbokeh.evaluation.runner import load_samples, predict, score
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

STAGES = ("predict", "score", "report")


def run_evaluation(
    benchmark_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    methods: Sequence[Method],
    metric_names: Sequence[str],
    *,
    benchmark_name: str = "benchmark",
    stages: Sequence[str] = STAGES,
    seeds: Sequence[int] = (0,),
    input_key: str = "lq",
    max_samples: int | None = None,
    metric_kwargs: dict | None = None,
    num_grid_samples: int = 4,
) -> dict | None:
    """Predict (stage 1), score (stage 2) and report (stage 3) into ``run_dir``; returns the summary if scored.

    Each stage reads what the previous one left on disk, so any suffix of the stages can be rerun alone on the same
    ``run_dir`` (e.g. ``stages=["score", "report"]`` with other metrics).
    """
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    if not seeds:
        raise ConfigError("seeds must list at least one seed")
    run_dir = Path(run_dir)
    _, samples = load_samples(benchmark_root, max_samples)
    logger.info("benchmark %s: %d samples from %s -> %s", benchmark_name, len(samples), benchmark_root, run_dir)
    if "predict" in stages:
        if not methods:
            raise ConfigError("no method to evaluate (the model methods need ckpt=...)")
        predict(methods, samples, run_dir, seeds, input_key)
    summary = None
    if "score" in stages:
        summary = score(
            run_dir, samples, metric_names, input_key=input_key, metric_kwargs=metric_kwargs,
            benchmark_name=benchmark_name,
        )  # fmt: skip
        logger.info("results:\n%s", (run_dir / "table.md").read_text())
    if "report" in stages:
        if summary is None:
            raise ConfigError("the report stage needs the score stage in the same call (stages=[score,report])")
        with (run_dir / "per_image.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        write_report(run_dir, summary, rows, samples, input_key=input_key, num_grid_samples=num_grid_samples)
    return summary
