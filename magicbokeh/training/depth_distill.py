"""Degradation-aware depth distillation as a training task: the loop around :mod:`magicbokeh.depth.distill`.

``python scripts/train_depth.py experiment=depth_smoke`` runs :func:`train_depth`: config → objects once, then
:func:`distill` steps the student (AdamW, diffusers' warm-up/decay schedule, gradient clipping, the trainer's guarded
update, accelerate for several processes), evaluates it on a fixed set, checkpoints through accelerate (resumable
on every rank, :mod:`magicbokeh.training.checkpointing`), logs through accelerate's trackers and writes
``<run_dir>/student`` and ``depth_results.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from magicbokeh.depth.distill import (
    DistillLossWeights,
    distillation_loss,
    evaluate_distillation,
    freeze,
    make_student,
    parameter_groups,
)
from magicbokeh.depth.model import DepthModel
from magicbokeh.errors import ConfigError, DatasetError, MagicBokehError, TrainingDivergedError
from magicbokeh.training.checkpointing import (
    Checkpoints,
    TrainingProgress,
    WeightsFile,
    list_checkpoints,
    read_contents,
)
from magicbokeh.training.data_streams import BatchStream, collate_samples
from magicbokeh.training.optim import build_lr_scheduler, guarded_update
from magicbokeh.training.run_dir import choose_run_dir
from magicbokeh.training.tracking import run_uid, tracker_settings
from magicbokeh.utils.distributed import build_accelerator, distributed_state
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.progress import progress_bar

logger = get_logger(__name__)

STUDENT_FOLDER = "student"
TEACHER_FOLDER = "teacher"  # only for a randomly initialised teacher, which exists nowhere else
RESULTS_FILE = "depth_results.json"


def write_results(path: Path, results: Mapping[str, Any]) -> None:
    atomic_write_text(path, json.dumps(dict(results), indent=2))


def summary_lines(initial: Mapping[str, float], final: Mapping[str, float]) -> list[str]:
    """Human-readable comparison printed at the end of a run."""
    lines = [
        "depth distillation — student on degraded input vs teacher on clean input (aligned, lower AbsRel is better):",
        f"  un-distilled student: AbsRel {final['undistilled/abs_rel']:.4f}  δ1 {final['undistilled/delta1']:.4f}",
        f"  distilled student   : AbsRel {final['student/abs_rel']:.4f}  δ1 {final['student/delta1']:.4f}"
        f"  (at the start of this run: AbsRel {initial['student/abs_rel']:.4f})",
    ]
    lines.append(f"  AbsRel reduced by {100 * relative_improvement(final):.1f}% relative to the un-distilled student")
    if "gt/student/abs_rel" in final:
        lines.append(
            "  vs ground truth     : "
            f"teacher(clean) {final['gt/teacher_clean/abs_rel']:.4f}, "
            f"un-distilled(degraded) {final['gt/undistilled/abs_rel']:.4f}, "
            f"distilled(degraded) {final['gt/student/abs_rel']:.4f}"
        )
    return lines


def relative_improvement(final: Mapping[str, float]) -> float:
    """1 − AbsRel(student) / AbsRel(un-distilled): relative error reduction by distillation (> 0 = better)."""
    baseline = final["undistilled/abs_rel"]
    return 1.0 - final["student/abs_rel"] / baseline if baseline > 0 else math.nan


def _resolve_resume(resume: str | None, checkpoint_dir: Path) -> Path | None:
    """``None`` → fresh run; ``"latest"`` → newest checkpoint of this run (fresh if none); else a folder."""
    if resume is None:
        return None
    if str(resume) == "latest":
        found = list_checkpoints(checkpoint_dir)
        if not found:
            logger.warning("resume=latest but %s holds no checkpoint: starting fresh", checkpoint_dir)
            return None
        return found[-1]
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"resume checkpoint '{path}' does not exist (pass <run_dir>/checkpoints/step_NNNNNN)")
    return path


def _fixed_batches(dataset, batch_size: int, collate) -> list[dict[str, Any]]:
    """The whole (small) evaluation set, collated once, so every evaluation sees identical inputs."""
    if len(dataset) == 0:
        raise DatasetError("the depth evaluation set is empty")
    items = [dataset[i] for i in range(len(dataset))]
    return [collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


@dataclass(frozen=True)
class DistillSettings:
    """Typed settings of one distillation run (``configs/depth.yaml`` → ``distill``)."""

    steps: int = 1000
    batch_size: int = 4
    lr: float = 5e-6
    head_lr: float = 5e-5
    weight_decay: float = 1e-2
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    log_every: int = 10
    eval_every: int = 200
    checkpoint_every: int = 500
    keep_last: int = 2
    num_workers: int = 0
    max_consecutive_skips: int = 20  # non-finite updates in a row before distillation stops with an error


def distill(
    teacher: DepthModel,
    train_dataset,
    eval_dataset,
    settings: DistillSettings,
    weights: DistillLossWeights,
    run_dir: Path,
    *,
    seed: int,
    resume: str | None = None,
    logger_cfg: Mapping[str, Any] | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Distil ``teacher`` into a student on degraded inputs; returns the final evaluation metrics.

    Writes ``<run_dir>/checkpoints/step_*`` (resumable), ``<run_dir>/student`` (the final student, loadable by
    :func:`~magicbokeh.depth.build_depth_model`), ``metrics.jsonl`` and ``depth_results.json``. ``run_dir`` is the
    same on every rank (:func:`train_depth` broadcasts rank 0's).
    """
    run_dir = Path(run_dir)
    resume_path = _resolve_resume(resume, run_dir / "checkpoints")
    resume_step = read_contents(resume_path)["step"] if resume_path is not None else None
    state = distributed_state()
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    uid = run_uid(run_dir, resuming=resume_path is not None) if state.is_main_process else None
    logger_cfg = dict(logger_cfg or {"name": "none"})
    log_with, tracker_kwargs = tracker_settings(logger_cfg, run_dir, uid, resume_step)
    accelerator = build_accelerator(settings.mixed_precision, log_with=log_with)
    try:
        return _distill(
            accelerator, teacher, train_dataset, eval_dataset, settings, weights, run_dir, seed, resume_path,
            str(logger_cfg.get("project", "magicbokeh")), dict(run_config or {}), tracker_kwargs,
        )  # fmt: skip
    finally:
        accelerator.end_training()  # closes metrics.jsonl and finishes wandb even when distillation raised


def _distill(
    accelerator, teacher, train_dataset, eval_dataset, settings, weights, run_dir, seed, resume_path, project,
    run_config, tracker_kwargs,
) -> dict[str, float]:  # fmt: skip
    device = accelerator.device
    eval_batches = _fixed_batches(eval_dataset, settings.batch_size, collate_samples)

    freeze(teacher.to(device))
    student = make_student(teacher)
    optimizer = torch.optim.AdamW(
        parameter_groups(student, settings.lr, settings.head_lr), weight_decay=settings.weight_decay
    )
    # Not prepared: accelerate would step a prepared scheduler once per process per step; it is checkpointed below.
    scheduler = build_lr_scheduler(optimizer, settings.warmup_steps, settings.lr_schedule, settings.steps)
    student, optimizer = accelerator.prepare(student, optimizer)
    unwrapped = accelerator.unwrap_model(student)
    stream = BatchStream(
        train_dataset,
        settings.batch_size,
        seed=seed,
        num_workers=settings.num_workers,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
    )
    progress = TrainingProgress()
    checkpoints = Checkpoints(
        accelerator,
        run_dir / "checkpoints",
        settings.keep_last,
        weights=[WeightsFile("student", unwrapped, unwrapped.network.state_dict, unwrapped.network.load_state_dict)],
        states={"progress": progress, "stream": stream, "lr": scheduler},
        optimizers=["student"],
    )
    if resume_path is not None:
        checkpoints.load(resume_path)
        logger.info("resumed from %s at step %d", resume_path, progress.step)
    accelerator.init_trackers(project, run_config, tracker_kwargs)

    unwrapped.eval()
    initial = evaluate_distillation(unwrapped, teacher, eval_batches, device)
    unwrapped.train()
    accelerator.log({f"eval/{k}": v for k, v in initial.items()}, step=progress.step)
    bar = progress_bar(
        total=settings.steps, initial=progress.step, desc="distill", disable=not accelerator.is_main_process
    )
    while progress.step < settings.steps:
        batch = next(stream)
        with accelerator.autocast():
            with torch.no_grad():
                target = teacher(batch["clean"].to(device))
            prediction = student(batch["degraded"].to(device))
            loss, terms = distillation_loss(prediction, target, weights)
        accelerator.backward(loss)
        update = guarded_update(optimizer, list(student.parameters()), loss, settings.grad_clip or None, accelerator)
        if update.applied:
            scheduler.step()
            progress.consecutive_skips = 0
        else:
            progress.skipped_steps += 1
            progress.consecutive_skips += 1
            if progress.consecutive_skips >= settings.max_consecutive_skips:
                raise TrainingDivergedError(
                    f"{progress.consecutive_skips} consecutive distillation updates had a non-finite loss or "
                    "gradient; lower distill.lr / distill.head_lr or use bf16 rather than fp16"
                )
        progress.step += 1
        bar.update(1)
        step = progress.step
        if step % settings.log_every == 0 or step == settings.steps:
            values = {"loss": update.loss, **{f"loss/{k}": v for k, v in terms.items()}}
            accelerator.log({**values, "skipped_steps": progress.skipped_steps}, step=step)
            bar.set_postfix(loss=f"{update.loss:.4f}")
        if step % settings.eval_every == 0 and step < settings.steps:
            unwrapped.eval()
            metrics = evaluate_distillation(unwrapped, teacher, eval_batches, device)
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
            unwrapped.train()
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            checkpoints.save(step)
    bar.close()

    unwrapped.eval()
    final = evaluate_distillation(unwrapped, teacher, eval_batches, device)
    accelerator.log({f"eval/{k}": v for k, v in final.items()}, step=progress.step)
    if accelerator.is_main_process:
        unwrapped.save(run_dir / STUDENT_FOLDER)
        write_results(run_dir / RESULTS_FILE, {"initial": initial, "final": final, "steps": progress.step})
    accelerator.wait_for_everyone()
    return final


def _instantiate(instantiate, node):
    """``hydra.utils.instantiate`` re-raising a wrapped :class:`MagicBokehError` as itself, so the CLI prints its
    one-line message (missing weights, bad dataset folder) instead of Hydra's wrapper."""
    try:
        return instantiate(node)
    except Exception as error:
        cause = error
        while cause is not None and not isinstance(cause, MagicBokehError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def train_depth(cfg) -> dict[str, float]:
    """Entry point of ``scripts/train_depth.py``: config → objects (once, here), then :func:`distill`.

    Prints the student-vs-baseline comparison at the end and returns the final evaluation metrics.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from magicbokeh.utils.seeding import seed_everything

    seed_everything(int(cfg.seed))
    run_dir = choose_run_dir(cfg, distributed_state())
    teacher = _instantiate(instantiate, cfg.depth)
    if cfg.depth.get("weights") is None and distributed_state().is_main_process:
        # A random teacher (tiny smoke runs) can be rebuilt by no one: keep it beside its student, so the pair can
        # be used together later (e.g. the depth study's smoke scale conditions on both).
        teacher.save(run_dir / TEACHER_FOLDER)
    train_dataset = _instantiate(instantiate, cfg.data.train)
    eval_dataset = _instantiate(instantiate, cfg.data.eval)
    settings = DistillSettings(**OmegaConf.to_container(cfg.distill, resolve=True))
    loss_cfg = OmegaConf.to_container(cfg.loss, resolve=True)
    weights = DistillLossWeights(
        feature=float(loss_cfg["feature"]),
        ssi=float(loss_cfg["ssi"]),
        grad=float(loss_cfg["grad"]),
        feature_layers=tuple(int(i) for i in loss_cfg["feature_layers"]),
    )
    num_layers = len(teacher.network.config.backbone_config.out_indices)
    if any(not 0 <= i < num_layers for i in weights.feature_layers):
        raise ConfigError(
            f"loss.feature_layers must index the {num_layers} encoder outputs, got {weights.feature_layers}"
        )
    job_config = OmegaConf.to_container(cfg, resolve=False)
    job_config.pop("hydra", None)
    results_before = run_dir / RESULTS_FILE
    final = distill(
        teacher,
        train_dataset,
        eval_dataset,
        settings,
        weights,
        run_dir,
        seed=int(cfg.seed),
        resume=cfg.resume,
        logger_cfg=OmegaConf.to_container(cfg.logger, resolve=True),
        run_config=job_config,
    )
    initial = json.loads(results_before.read_text())["initial"] if results_before.is_file() else final
    for line in summary_lines(initial, final):
        print(line)
    print(f"  student weights: {run_dir / STUDENT_FOLDER}  (load with depth.weights=<that folder>)")
    return final
