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

The loop that optimises this (checkpoints, resume, logging) is a training task:
:mod:`magicbokeh.training.depth_distill`.

Data contract: the dataset yields dicts with ``clean`` and ``degraded`` (``3×H×W`` [0, 1]) and, optionally,
``disparity`` (``1×H×W`` ground truth, e.g. synthetic scenes), which enables the ground-truth metrics.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from magicbokeh.depth.metrics import disparity_metrics
from magicbokeh.depth.model import DepthForward, DepthModel
from magicbokeh.errors import ConfigError, DatasetError

GRADIENT_SCALES = 4
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
# The student and its optimiser groups
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
