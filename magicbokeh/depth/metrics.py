"""Depth metrics for relative (affine-invariant) predictions: AbsRel and δ<1.25 after scale-and-shift alignment.

A relative depth network predicts disparity up to an unknown scale s and shift t, so it is first aligned to the
reference by least squares (MiDaS protocol, Ranftl et al. 2020, eq. 4):

    (s, t) = argmin Σ_i m_i (s·p_i + t − g_i)²,

solved per image in closed form. Then

    AbsRel = mean_i |x̂_i − x_i| / x_i,        δ1 = mean_i [max(x̂_i / x_i, x_i / x̂_i) < 1.25],

over valid pixels, where x is the reference in the space the metric is reported in:

* :func:`disparity_metrics` — reference is a disparity map (a teacher's prediction, or a synthetic scene's exact
  disparity); x = disparity. Pixels with a reference below ``min_target`` are left out: a min-max normalised map is
  0 at its farthest point, where a relative error is undefined.
* :func:`depth_metrics` — reference is metric depth (NYUv2, KITTI); alignment happens in disparity space (1/depth,
  as the network predicts), then x = depth = 1 / aligned disparity, capped at ``max_depth``.

Every function returns per-image ``B`` tensors so callers can average over a dataset without weighting by size.
"""

from __future__ import annotations

import torch

from magicbokeh.errors import InvalidInputError

DELTA_THRESHOLD = 1.25


def _check_pair(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if prediction.ndim != 4 or prediction.shape[1] != 1 or prediction.shape != target.shape:
        raise InvalidInputError(
            f"depth metrics need prediction and reference of equal shape B×1×H×W, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    if mask is None:
        return torch.ones_like(target, dtype=torch.bool)
    if mask.shape != target.shape:
        raise InvalidInputError(f"validity mask shape {tuple(mask.shape)} differs from {tuple(target.shape)}")
    return mask.bool()


def scale_shift(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image least-squares (s, t) with s·prediction + t ≈ target over the mask; each of shape ``B``.

    Normal equations of the 2-parameter fit: [Σp² Σp; Σp Σ1]·[s; t] = [Σpg; Σg]. An image with a constant
    prediction (singular system) gets s = 0 and t = mean target.
    """
    valid = _check_pair(prediction, target, mask).float()
    p, g = prediction.float() * valid, target.float() * valid
    dims = (1, 2, 3)
    n = valid.sum(dims)
    sum_p, sum_g = p.sum(dims), g.sum(dims)
    sum_pp, sum_pg = (p * p).sum(dims), (p * g).sum(dims)
    determinant = n * sum_pp - sum_p * sum_p
    ok = determinant.abs() > 1e-12 * n.clamp_min(1) ** 2
    safe = torch.where(ok, determinant, torch.ones_like(determinant))
    scale = torch.where(ok, (n * sum_pg - sum_p * sum_g) / safe, torch.zeros_like(determinant))
    shift = torch.where(ok, (sum_pp * sum_g - sum_p * sum_pg) / safe, sum_g / n.clamp_min(1))
    return scale, shift


def align_scale_shift(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``prediction`` mapped onto ``target`` by the least-squares scale and shift of :func:`scale_shift`."""
    scale, shift = scale_shift(prediction, target, mask)
    return prediction.float() * scale.view(-1, 1, 1, 1) + shift.view(-1, 1, 1, 1)


def _ratio_metrics(estimate: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    count = valid.float().sum((1, 2, 3))
    if (count == 0).any():
        raise InvalidInputError("an image has no valid pixel for depth metrics (empty mask or no positive reference)")
    reference = torch.where(valid, reference, torch.ones_like(reference))
    estimate = torch.where(valid, estimate, torch.ones_like(estimate))
    abs_rel = ((estimate - reference).abs() / reference * valid).sum((1, 2, 3)) / count
    ratio = torch.maximum(estimate / reference, reference / estimate)
    # A non-positive estimate can never be within 25 % of a positive reference.
    within = (ratio < DELTA_THRESHOLD) & (estimate > 0) & valid
    return {"abs_rel": abs_rel, "delta1": within.float().sum((1, 2, 3)) / count}


def disparity_metrics(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    min_target: float = 0.01,
) -> dict[str, torch.Tensor]:
    """AbsRel and δ1 (per image, ``B`` tensors) of an aligned prediction against a reference disparity map."""
    valid = _check_pair(prediction, target, mask) & (target > min_target)
    aligned = align_scale_shift(prediction, target, valid)
    return _ratio_metrics(aligned, target.float(), valid)


def depth_metrics(
    prediction: torch.Tensor,
    depth: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
) -> dict[str, torch.Tensor]:
    """AbsRel and δ1 (per image) of a predicted disparity against metric ground-truth ``depth`` (NYUv2/KITTI).

    Valid pixels: ``mask`` and ``min_depth < depth ≤ max_depth`` (use 10 m for NYUv2, 80 m for KITTI).
    """
    valid = _check_pair(prediction, depth, mask) & (depth > min_depth) & (depth <= max_depth)
    target_disparity = torch.where(valid, 1.0 / depth.float().clamp_min(min_depth), torch.zeros_like(depth))
    aligned = align_scale_shift(prediction, target_disparity, valid)
    estimate = 1.0 / aligned.clamp_min(1.0 / max_depth)
    return _ratio_metrics(estimate, depth.float(), valid)
