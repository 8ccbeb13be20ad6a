"""One call for the whole evaluation (what ``scripts/evaluate.py`` runs once its config is turned into objects).

Stages run in order on one run directory; each reads what the previous one left on disk, so any subset can be rerun
alone (``stages=[score,report]`` with other metrics, ``stages=[report]``). The run's manifest
(:mod:`magicbokeh.evaluation.manifest`) is checked first: results made from another checkpoint, benchmark or
setting are refused (or cleared with ``overwrite``).

Several processes (``accelerate launch`` / ``torchrun``): every process predicts its share of the samples; after a
barrier the main process scores and reports, and the others return.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from magicbokeh.errors import ConfigError, DatasetError
from magicbokeh.evaluation.baselines import Method
from magicbokeh.evaluation.inputs import SampleInputs
from magicbokeh.evaluation.manifest import check_manifest, clear_outputs, record_manifest
from magicbokeh.evaluation.reports import write_report
from magicbokeh.evaluation.runner import load_samples, predict, read_rows, score
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

STAGES = ("predict", "score", "report")


def run_evaluation(
    benchmark_root: str | os.PathLike,
    run_dir: str | os.PathLike,
    methods: Sequence[Method],
    metric_names: Sequence[str],
    inputs: SampleInputs,
    *,
    manifest: dict,
    benchmark_name: str = "benchmark",
    stages: Sequence[str] = STAGES,
    seeds: Sequence[int] = (0,),
    max_samples: int | None = None,
    metric_kwargs: dict | None = None,
    metric_batch_size: int = 8,
    num_grid_samples: int = 4,
    reference: dict | None = None,
    overwrite: bool = False,
    accelerator: Any | None = None,
) -> dict | None:
    """Predict (stage 1), score (stage 2) and report (stage 3) into ``run_dir``; returns the summary (main process).

    Args:
        inputs: how samples become method inputs (protocol, disparity cache in ``run_dir``, depth model).
        manifest: this call's manifest (:func:`~magicbokeh.evaluation.manifest.build_manifest`).
        reference: the paper's published row for this benchmark, shown beside ours in ``table.md``.
        overwrite: clear what this call's stages write when the stored manifest differs (or anyway).
        accelerator: an ``accelerate.Accelerator`` of a multi-process launch (None: one process).
    """
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown or not stages:
        raise ConfigError(f"unknown or no stage(s) {list(stages)}; stages are a subset of {', '.join(STAGES)}")
    if not seeds:
        raise ConfigError("seeds must list at least one seed")
    run_dir = Path(run_dir)
    process_index = accelerator.process_index if accelerator is not None else 0
    num_processes = accelerator.num_processes if accelerator is not None else 1
    main = process_index == 0

    def barrier() -> None:
        if accelerator is not None:
            accelerator.wait_for_everyone()

    _, samples = load_samples(benchmark_root, max_samples)
    if main:
        logger.info("benchmark %s: %d samples from %s -> %s", benchmark_name, len(samples), benchmark_root, run_dir)
    clear = check_manifest(run_dir, manifest, stages, overwrite=overwrite)  # every process: all refuse together
    barrier()
    if main:
        if clear:
            clear_outputs(run_dir, stages)
        record_manifest(run_dir, manifest, stages, replace=overwrite and "predict" in stages)
    barrier()

    if "predict" in stages:
        if not methods:
            raise ConfigError("no method to predict (the model methods need ckpt=...)")
        predict(methods, samples, run_dir, inputs, seeds, process_index=process_index, num_processes=num_processes)
        barrier()
    if not main:
        return None
    summary = None
    if "score" in stages:
        summary = score(
            run_dir, samples, metric_names, inputs, metric_kwargs=metric_kwargs, batch_size=metric_batch_size,
            benchmark_name=benchmark_name, reference=reference,
        )  # fmt: skip
        logger.info("results:\n%s", (run_dir / "table.md").read_text())
    if "report" in stages:
        if summary is None:
            summary = _read_summary(run_dir)
        rows = read_rows(run_dir / "per_image.csv")
        write_report(
            run_dir, summary, rows, samples, input_key=inputs.protocol.input, num_grid_samples=num_grid_samples
        )
    return summary


def _read_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file() or not (run_dir / "per_image.csv").is_file():
        raise DatasetError(f"no scores in '{run_dir}' (summary.json, per_image.csv): run the score stage first")
    return json.loads(path.read_text())


def degradation_mismatches(training_info: dict, benchmark_meta: dict) -> list[str]:
    """How the benchmark's inputs were made differently from the checkpoint's training inputs, one line each:
    the degradation preset and settings (``config.json`` → ``training`` vs the index's ``meta``) and the CoC scale
    of the bokeh targets (``max_coc_px``). Empty when both agree or either side does not say."""
    lines = []
    trained, built = training_info.get("degradation"), benchmark_meta.get("degradation")
    trained_preset, built_preset = training_info.get("degradation_preset"), benchmark_meta.get("degradation_preset")
    if trained_preset and built_preset and trained_preset != built_preset:
        lines.append(f"degradation preset: checkpoint '{trained_preset}', benchmark '{built_preset}'")
    if isinstance(trained, dict) and isinstance(built, dict):
        differing = [key for key in sorted(set(trained) & set(built)) if trained[key] != built[key]]
        shown = [f"{key}: checkpoint {trained[key]!r}, benchmark {built[key]!r}" for key in differing[:4]]
        lines += [f"degradation {text}" for text in shown]
        if len(differing) > len(shown):
            lines.append(f"… and {len(differing) - len(shown)} other degradation setting(s)")
    coc_trained, coc_built = training_info.get("max_coc_px"), benchmark_meta.get("max_coc_px")
    if coc_trained is not None and coc_built is not None and float(coc_trained) != float(coc_built):
        lines.append(f"bokeh scale max_coc_px: checkpoint {coc_trained:g}, benchmark targets {coc_built:g}")
    return lines
