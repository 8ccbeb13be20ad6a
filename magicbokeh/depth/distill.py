"""Degradation-aware depth distillation (REFERENCE §1.5): a frozen teacher sees the clean HQ image, a student
initialised from the same weights sees the degraded LQ version, and learns to reproduce the teacher.

Loss (per batch; weights in ``configs/depth.yaml`` → ``distill``)::

    L = λ_feat · L_feat + λ_ssi · L_ssi + λ_grad · L_grad

* ``L_feat`` — encoder feature distillation: mean over the chosen encoder layers (the DINOv2 blocks that feed the
  DPT head) of the token-wise cosine distance 1 − cos(f_s, f_t). Cosine, not L2, because DINOv2 token norms vary a
  lot between layers and a few high-norm tokens would otherwise dominate (the alignment loss of Depth Anything v1
  uses the same form).
* ``L_ssi`` — scale-and-shift-invariant L1 on disparity (MiDaS, Ranftl et al. 2020, eqs. 5–7): each map is
  normalised by its median t and mean absolute deviation s, d̂ = (d − t)/s, then L_ssi = mean |d̂_s − d̂_t|. The
  teacher's output is itself only defined up to scale and shift, so the student should only match it up to those.
* ``L_grad`` — multi-scale gradient matching (MiDaS eq. 11) on the normalised residual R = d̂_s − d̂_t:
  Σ_k mean(|∂x R_k| + |∂y R_k|) over 4 scales (R_k = R subsampled by 2^k); keeps depth edges sharp.

The paper's exact loss forms, layers and weights are not public (REFERENCE §7.7); these are our choices.

Data contract: the dataset yields dicts with ``clean`` and ``degraded`` (``3×H×W`` [0, 1]) and, optionally,
``disparity`` (``1×H×W`` ground truth, e.g. synthetic scenes), which enables the ground-truth metrics.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from magicbokeh.depth.metrics import disparity_metrics
from magicbokeh.depth.model import DepthForward, DepthModel
from magicbokeh.errors import ConfigError, DatasetError, MagicBokehError
from magicbokeh.utils.distributed import build_accelerator
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

GRADIENT_SCALES = 4
STUDENT_FOLDER = "student"
RESULTS_FILE = "depth_results.json"
# Relative metrics leave out reference disparities below this: a disparity's relative error is unbounded as it
# approaches 0 (infinitely far), and min-max normalised maps reach 0 at their farthest pixel, so the farthest 10 %
# of each reference map's range would otherwise dominate AbsRel.
MIN_REFERENCE = 0.1


# --------------------------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------------------------
def ssi_normalize(disparity: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image d̂ = (d − median(d)) / mean|d − median(d)| for ``B×1×H×W`` maps (MiDaS eqs. 5–6)."""
    flat = disparity.flatten(1)
    shift = flat.median(dim=1, keepdim=True).values
    scale = (flat - shift).abs().mean(dim=1, keepdim=True).clamp_min(eps)
    return ((flat - shift) / scale).view_as(disparity)


def ssi_l1_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean |d̂_s − d̂_t| (MiDaS eq. 7 with ρ = L1); both maps ``B×1×H×W`` at the same size."""
    return (ssi_normalize(student) - ssi_normalize(teacher)).abs().mean()


def gradient_matching_loss(student: torch.Tensor, teacher: torch.Tensor, scales: int = GRADIENT_SCALES) -> torch.Tensor:
    """Σ_k mean(|∂x R_k| + |∂y R_k|), R = d̂_s − d̂_t, R_k subsampled by 2^k (MiDaS eq. 11)."""
    residual = ssi_normalize(student) - ssi_normalize(teacher)
    total = residual.new_zeros(())
    for k in range(scales):
        r = residual[..., :: 2**k, :: 2**k]
        if min(r.shape[-2:]) < 2:
            break
        total = total + (r[..., :, 1:] - r[..., :, :-1]).abs().mean() + (r[..., 1:, :] - r[..., :-1, :]).abs().mean()
    return total


def feature_distillation_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], layers: Sequence[int]
) -> torch.Tensor:
    """Mean over ``layers`` (indices into the encoder outputs) of the mean token-wise 1 − cos(f_s, f_t)."""
    losses = [(1.0 - F.cosine_similarity(student[i], teacher[i].detach(), dim=-1)).mean() for i in layers]
    return torch.stack(losses).mean()


@dataclass(frozen=True)
class DistillLossWeights:
    feature: float = 1.0
    ssi: float = 1.0
    grad: float = 0.5
    feature_layers: tuple[int, ...] = (0, 1, 2, 3)


def distillation_loss(
    student: DepthForward, teacher: DepthForward, weights: DistillLossWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its (detached) terms. The student's disparity is resized to the teacher's if they differ
    (an LQ input of another size)."""
    s_disp, t_disp = student.disparity.float(), teacher.disparity.detach().float()
    if s_disp.shape[-2:] != t_disp.shape[-2:]:
        s_disp = F.interpolate(s_disp, size=t_disp.shape[-2:], mode="bilinear", align_corners=True)
    terms = {"ssi": ssi_l1_loss(s_disp, t_disp), "grad": gradient_matching_loss(s_disp, t_disp)}
    total = weights.ssi * terms["ssi"] + weights.grad * terms["grad"]
    if weights.feature > 0:
        if [f.shape for f in student.features] != [f.shape for f in teacher.features]:
            raise ConfigError(
                "feature distillation needs student and teacher inputs of the same size (the degraded image must "
                "be resized back to the clean image's size: degradation.resize_back=true)"
            )
        terms["feature"] = feature_distillation_loss(student.features, teacher.features, weights.feature_layers)
        total = total + weights.feature * terms["feature"]
    return total, {name: value.detach() for name, value in terms.items()}


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_distillation(
    student: DepthModel, teacher: DepthModel, batches: Iterable[Mapping[str, Any]], device: torch.device
) -> dict[str, float]:
    """Aligned AbsRel/δ1 on a fixed evaluation set (per-image means).

    * ``student/*`` — student on degraded input vs teacher on the clean image (what distillation optimises);
    * ``undistilled/*`` — the initial weights (= teacher) on degraded input vs teacher on clean: the baseline;
    * ``gt/{student,undistilled,teacher_clean}/*`` — against ground-truth disparity, when the data has it.

    An image whose reference map is flat (no pixel above the metrics' floor, e.g. a collapsed teacher) cannot be
    scored; it is left out and counted in ``skipped``.
    """
    sums: dict[str, float] = {}
    count = skipped = 0
    for batch in batches:
        clean, degraded = batch["clean"].to(device), batch["degraded"].to(device)
        reference = teacher.predict_disparity(clean)
        keep = (reference > MIN_REFERENCE).flatten(1).any(dim=1)
        skipped += int((~keep).sum())
        if not keep.any():
            continue
        reference, degraded = reference[keep], degraded[keep]
        predictions = {
            "student": student.predict_disparity(degraded),
            "undistilled": teacher.predict_disparity(degraded),
        }
        results = {}
        for name, prediction in predictions.items():
            results.update({f"{name}/{k}": v for k, v in _metrics(prediction, reference).items()})
        if "disparity" in batch:
            truth = batch["disparity"].to(device)[keep]
            predictions["teacher_clean"] = reference
            for name, prediction in predictions.items():
                results.update({f"gt/{name}/{k}": v for k, v in _metrics(prediction, truth).items()})
        for key, values in results.items():
            sums[key] = sums.get(key, 0.0) + float(values.sum())
        count += int(keep.sum())
    if count == 0:
        raise DatasetError(
            "no image of the depth evaluation set could be scored: the teacher predicts flat disparity everywhere"
        )
    return {**{key: total / count for key, total in sums.items()}, "skipped": float(skipped)}


def _metrics(prediction: torch.Tensor, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    if prediction.shape[-2:] != reference.shape[-2:]:
        prediction = F.interpolate(prediction, size=reference.shape[-2:], mode="bilinear", align_corners=True)
    return disparity_metrics(prediction, reference, min_target=MIN_REFERENCE)


# --------------------------------------------------------------------------------------------------------------------
# Building blocks of the loop
# --------------------------------------------------------------------------------------------------------------------
def make_student(teacher: DepthModel) -> DepthModel:
    """A trainable copy of the teacher (REFERENCE §1.5: both start from the same weights)."""
    student = copy.deepcopy(teacher)
    student.train()
    student.requires_grad_(True)
    # DINOv2's mask token only serves masked-image pre-training; it never receives a gradient here, and DDP
    # refuses parameters that never get one.
    student.network.backbone.embeddings.mask_token.requires_grad_(False)
    return student


def freeze(model: DepthModel) -> DepthModel:
    model.eval()
    model.requires_grad_(False)
    return model


def parameter_groups(student: DepthModel, lr: float, head_lr: float) -> list[dict[str, Any]]:
    """Encoder at ``lr``, DPT neck + head at ``head_lr`` (Depth Anything fine-tunes its head 10× faster)."""
    encoder = [p for p in student.network.backbone.parameters() if p.requires_grad]
    decoder = [p for n, p in student.network.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    return [{"params": encoder, "lr": lr}, {"params": decoder, "lr": head_lr}]


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


def _resolve_resume(resume: str | None, checkpoints) -> Path | None:
    """``None`` → fresh run; ``"latest"`` → newest checkpoint of this run (fresh if none); else a folder."""
    if resume is None:
        return None
    if str(resume) == "latest":
        latest = checkpoints.latest()
        if latest is None:
            logger.warning("resume=latest but %s holds no checkpoint: starting fresh", checkpoints.checkpoint_dir)
        return latest
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


# --------------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------------
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
    :func:`~magicbokeh.depth.build_depth_model`), ``metrics.jsonl`` and ``depth_results.json``.
    """
    from magicbokeh.training.checkpointing import CheckpointManager, capture_rng_state, restore_rng_state
    from magicbokeh.training.data_streams import BatchStream, collate_samples
    from magicbokeh.training.optim import build_lr_scheduler
    from magicbokeh.training.tracking import Tracker

    accelerator = build_accelerator(settings.mixed_precision)
    device = accelerator.device
    run_dir = Path(run_dir)
    checkpoints = CheckpointManager(run_dir / "checkpoints", settings.keep_last)
    resume_path = _resolve_resume(resume, checkpoints)
    eval_batches = _fixed_batches(eval_dataset, settings.batch_size, collate_samples)

    freeze(teacher.to(device))
    student = make_student(teacher)
    optimizer = torch.optim.AdamW(
        parameter_groups(student, settings.lr, settings.head_lr), weight_decay=settings.weight_decay
    )
    scheduler = build_lr_scheduler(optimizer, settings.warmup_steps, settings.lr_schedule, settings.steps)
    step, position = 0, 0
    if resume_path is not None:
        model_state, optimizer_states, scheduler_states, trainer_state = checkpoints.load(resume_path)
        student.network.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_states["student"])
        scheduler.load_state_dict(scheduler_states["student"])
        step, position = int(trainer_state["step"]), int(trainer_state["position"])
        restore_rng_state(trainer_state["rng"])
        logger.info("resumed from %s at step %d", resume_path, step)
    student, optimizer, scheduler = accelerator.prepare(student, optimizer, scheduler)
    stream = BatchStream(
        train_dataset,
        settings.batch_size,
        seed=seed,
        num_workers=settings.num_workers,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        position=position,
    )
    tracker = Tracker(run_dir, logger_cfg or {"name": "none"}, run_config or {}, accelerator.is_main_process)
    unwrapped = accelerator.unwrap_model(student)

    unwrapped.eval()
    initial = evaluate_distillation(unwrapped, teacher, eval_batches, device)
    unwrapped.train()
    tracker.log({f"eval/{k}": v for k, v in initial.items()}, step)
    progress = tqdm(total=settings.steps, initial=step, desc="distill", disable=not accelerator.is_main_process)
    while step < settings.steps:
        batch = next(stream)
        with accelerator.autocast():
            with torch.no_grad():
                target = teacher(batch["clean"].to(device))
            prediction = student(batch["degraded"].to(device))
            loss, terms = distillation_loss(prediction, target, weights)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if settings.grad_clip > 0:
            accelerator.clip_grad_norm_(student.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        progress.update(1)
        if step % settings.log_every == 0 or step == settings.steps:
            tracker.log({"loss": loss.detach(), **{f"loss/{k}": v for k, v in terms.items()}}, step)
            progress.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if step % settings.eval_every == 0 and step < settings.steps:
            unwrapped.eval()
            metrics = evaluate_distillation(unwrapped, teacher, eval_batches, device)
            tracker.log({f"eval/{k}": v for k, v in metrics.items()}, step)
            unwrapped.train()
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                checkpoints.save(
                    step,
                    unwrapped.network.state_dict(),
                    {"student": optimizer},
                    {"student": scheduler},
                    {"position": stream.position, "rng": capture_rng_state()},
                )
    progress.close()

    unwrapped.eval()
    final = evaluate_distillation(unwrapped, teacher, eval_batches, device)
    tracker.log({f"eval/{k}": v for k, v in final.items()}, step)
    tracker.close()
    if accelerator.is_main_process:
        unwrapped.save(run_dir / STUDENT_FOLDER)
        write_results(run_dir / RESULTS_FILE, {"initial": initial, "final": final, "steps": step})
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
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from magicbokeh.utils.seeding import seed_everything

    seed_everything(int(cfg.seed))
    run_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path(cfg.hydra.run.dir)
    teacher = _instantiate(instantiate, cfg.depth)
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
