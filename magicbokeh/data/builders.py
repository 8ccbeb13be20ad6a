"""Benchmark and dataset builders behind ``scripts/make_dataset.py`` (one function per subcommand).

Each writes a folder in the format of :mod:`magicbokeh.data.benchmark_index` (``index.json`` + files) or, for
:func:`write_synthetic_folder`, the photo/disparity/mask layout read by ``RenderedBokehDataset``. All randomness is
seeded per item (``sample_generator(seed, i)``), so a rebuild gives the same files, and an interrupted build resumes:
items whose files already exist are kept and not recomputed (files are written atomically, so none is half-written).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from magicbokeh.data.benchmark_index import BenchmarkSample, write_benchmark_index
from magicbokeh.data.datasets import EBBDataset
from magicbokeh.data.io import list_images, read_image, write_disparity, write_image
from magicbokeh.data.synthetic import SyntheticScene, SyntheticSceneGenerator, render_scene
from magicbokeh.data.transforms import resize_image
from magicbokeh.errors import DatasetError, ParameterError
from magicbokeh.optics.render import BokehRenderer
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.progress import progress_bar
from magicbokeh.utils.seeding import sample_generator

logger = get_logger(__name__)

Degradation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def describe_degradation(preset: str | None, settings: Mapping | None) -> dict:
    """How a benchmark's inputs were degraded, for its ``index.json`` meta: the preset name (``configs/degradation``)
    and its settings, in the form a checkpoint records its training degradation (``config.json`` → ``training``), so
    evaluation can compare the two."""
    settings = {key: value for key, value in dict(settings or {}).items() if key != "_target_"}
    return {"degradation_preset": preset, "degradation": settings or None}


def _degradation_meta(degradation: Degradation, info: dict | None) -> dict:
    # Without the caller's settings only the object's description is known (kept for the record; not comparable).
    return dict(info) if info is not None else {"degradation_preset": None, "degradation": repr(degradation)}


def _copy(source: Path, target: Path) -> Path:
    """Copy a file byte for byte (a JPEG target is not re-encoded), atomically."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.part")
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    return target


# --------------------------------------------------------------------------------------------------------------------
# EBB400-LQ
# --------------------------------------------------------------------------------------------------------------------
def select_ebb_ids(ebb: EBBDataset, count: int, seed: int, ids: Sequence[str] | None = None) -> list[int]:
    """Indices into ``ebb.pairs``: the named ``ids`` in their order, or ``count`` pairs drawn with ``seed``."""
    stems = [original.stem for original, _ in ebb.pairs]
    if ids is not None:
        position = {stem: i for i, stem in enumerate(stems)}
        missing = [i for i in ids if i not in position]
        if missing:
            raise DatasetError(f"EBB! folder '{ebb.root}' lacks the listed pairs {missing[:5]} ({len(missing)} in all)")
        return [position[i] for i in ids]
    if not 1 <= count <= len(stems):
        raise ParameterError(f"cannot select {count} pairs from {len(stems)} EBB! pairs")
    order = torch.randperm(len(stems), generator=sample_generator(seed, 0, "ebb-selection"))[:count]
    return sorted(order.tolist(), key=lambda i: (len(stems[i]), stems[i]))


def build_ebb400_lq(
    ebb_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    degradation: Degradation,
    *,
    disparity_dir: str | os.PathLike | None = None,
    count: int = 400,
    seed: int = 0,
    ids: Sequence[str] | None = None,
    K: float = 16.0,
    mask_dir: str | os.PathLike | None = None,
    original_dir: str = "original",
    bokeh_dir: str = "bokeh",
    degradation_info: dict | None = None,
) -> Path:
    """EBB400-LQ: ``count`` EBB! pairs (fixed seed or a fixed id list), the wide photo degraded at native size.

    The focus region comes from ``mask_dir`` (hand annotations) or, failing that, from the pair-agreement rule
    (:func:`~magicbokeh.data.datasets.focus_mask_from_pair`), saved as ``mask``. Without ``disparity_dir`` the
    benchmark is the paper's: no disparity and no fixed focus; evaluation estimates disparity from the LQ input
    with the degradation-aware depth model and focuses on the median disparity inside the mask
    (``configs/benchmark/ebb400_lq.yaml``). With it (one map per wide photo, e.g. a depth model run on the clean
    photo), the maps are stored and ``focus_disparity`` is their median inside the mask (the inference rule).
    ``degradation_info``: see :func:`describe_degradation`.
    """
    ebb = EBBDataset(
        ebb_root, split="all", crop_size=None, K=K, original_dir=original_dir, bokeh_dir=bokeh_dir,
        disparity_dir=disparity_dir, mask_dir=mask_dir, flip=False,
    )  # fmt: skip
    chosen = select_ebb_ids(ebb, count, seed, ids)
    out = Path(out_dir)
    samples = []
    for number, file_index in enumerate(progress_bar(chosen, desc="EBB400-LQ", unit="pair")):
        original, target = ebb.pairs[file_index]
        sample_id = original.stem
        paths = {
            "lq": out / "lq" / f"{sample_id}.png",
            "target": out / "target" / f"{sample_id}{target.suffix.lower()}",
            "hq": out / "hq" / f"{sample_id}{original.suffix.lower()}",
            "mask": out / "mask" / f"{sample_id}.png",
            "disparity": out / "disparity" / f"{sample_id}.npy" if disparity_dir is not None else None,
        }
        focus_path = out / "focus" / f"{sample_id}.json"
        if not (all(p.exists() for p in paths.values() if p is not None) and focus_path.exists()):
            wide, _, disparity, mask = ebb.read_pair(file_index)
            rule = "mask" if ebb.masks[file_index] else "pair_agreement"
            if not bool(mask.any()):
                # No pixel agreed: focus on the median of the whole image, so the stored mask says so too.
                mask, rule = torch.ones_like(mask), f"{rule}_empty_whole_image"
            lq = degradation(wide[None], sample_generator(seed, number, sample_id))[0]
            write_image(paths["lq"], lq)
            write_image(paths["mask"], mask.float())
            _copy(target, paths["target"])
            _copy(original, paths["hq"])
            focus = None
            if disparity is not None:
                write_disparity(paths["disparity"], disparity)
                focus = float(disparity[mask].median())
            atomic_write_text(focus_path, json.dumps({"focus_disparity": focus, "mask_rule": rule}))
        focus = json.loads(focus_path.read_text())
        extra = {"mask_rule": focus["mask_rule"], "source": str(original)}
        samples.append(
            BenchmarkSample(
                id=sample_id, task="bokeh", focus_disparity=focus["focus_disparity"], K=K, extra=extra, **paths
            )
        )
    atomic_write_text(out / "ids.txt", "".join(f"{s.id}\n" for s in samples))
    meta = {
        "source": str(ebb_root), "count": len(samples), "seed": seed, "K": K,
        "disparity": "given" if disparity_dir is not None else "estimate at evaluation",
        **_degradation_meta(degradation, degradation_info),
    }  # fmt: skip
    return write_benchmark_index(out, "ebb400_lq", samples, meta)


# --------------------------------------------------------------------------------------------------------------------
# RealSR / DRealSR
# --------------------------------------------------------------------------------------------------------------------
_HR_SUFFIX = re.compile(r"[_-]?(HR|hr|gt|GT)$")
_LR_SUFFIX = re.compile(r"[_-]?(LR|lr|lq|LQ)\d*$|[_-]?x\d+$")


def _sr_key(stem: str) -> str:
    return _LR_SUFFIX.sub("", _HR_SUFFIX.sub("", stem))


def pair_sr_files(hr_dir: str | os.PathLike, lr_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(HR, LR) pairs by name, for separate folders (StableSR's ``test_HR``/``test_LR``) or one folder holding
    both (RealSR's ``Canon_001_HR.png`` / ``Canon_001_LR4.png``)."""
    hr_dir, lr_dir = Path(hr_dir), Path(lr_dir)
    same = hr_dir.resolve() == lr_dir.resolve()
    hr_files = [p for p in list_images(hr_dir) if not same or _HR_SUFFIX.search(p.stem)]
    lr_files = [p for p in list_images(lr_dir) if not same or _LR_SUFFIX.search(p.stem)]
    if not hr_files:
        raise DatasetError(f"no HR images found in '{hr_dir}'")
    lr_by_key = {}
    for path in lr_files:
        lr_by_key.setdefault(_sr_key(path.stem), path)
    pairs = []
    for hr in hr_files:
        lr = lr_by_key.get(_sr_key(hr.stem))
        if lr is None:
            raise DatasetError(f"HR image '{hr}' has no LR partner in '{lr_dir}' (paired by name without _HR/_LRx)")
        pairs.append((hr, lr))
    return pairs


def build_sr_benchmark(
    hr_dir: str | os.PathLike, lr_dir: str | os.PathLike, out_dir: str | os.PathLike, name: str = "realsr"
) -> Path:
    """An SR benchmark folder: each LR image resized (bicubic) to its HR size as ``lq``, the HR copied as
    ``target``; ``task="sr"``, K = 0 (the all-zero defocus of Table S.2)."""
    out = Path(out_dir)
    samples = []
    for hr, lr in progress_bar(pair_sr_files(hr_dir, lr_dir), desc=name, unit="pair"):
        sample_id = _sr_key(hr.stem)
        lq_path, target_path = out / "lq" / f"{sample_id}.png", out / "target" / f"{sample_id}{hr.suffix.lower()}"
        if not lq_path.exists():
            hr_image, lr_image = read_image(hr), read_image(lr)
            write_image(lq_path, resize_image(lr_image, tuple(hr_image.shape[-2:])))
        _copy(hr, target_path)
        extra = {"source_lr": str(lr)}
        samples.append(BenchmarkSample(id=sample_id, task="sr", lq=lq_path, target=target_path, extra=extra))
    return write_benchmark_index(out, name, samples, {"hr_dir": str(hr_dir), "lr_dir": str(lr_dir)})


# --------------------------------------------------------------------------------------------------------------------
# Synthetic scenes
# --------------------------------------------------------------------------------------------------------------------
def _scene_focus(scene: SyntheticScene, rule: str) -> float:
    """Focus disparity of a scene: ``subject`` (median inside the subject), ``background`` (median outside it)."""
    disparity, subject = scene.disparity, scene.subject_mask.bool()
    region = subject if rule == "subject" else ~subject
    if not bool(region.any()):
        region = torch.ones_like(subject)
    return float(disparity[region].median())


def write_synthetic_folder(
    out_dir: str | os.PathLike,
    count: int,
    size: int,
    *,
    seed: int = 0,
    max_coc_px: float = 24.0,
    K_range: Sequence[float] = (2.0, 32.0),
    renderer: BokehRenderer | None = None,
    scene: dict | None = None,
) -> Path:
    """Write ``count`` scenes as ``image/``, ``disparity/`` (.npy), ``mask/`` (subject) and one rendered
    ``bokeh/<id>.png`` with ``bokeh/<id>.json`` (focus on the subject, K ~ U(K_range)): the layout
    ``RenderedBokehDataset(root=...)`` reads, plus exact layered-renderer ground truth for inspection."""
    if count < 1 or size < 16:
        raise ParameterError(f"count must be ≥ 1 and size ≥ 16, got {count} and {size}")
    renderer = dataclasses.replace(renderer or BokehRenderer(), max_coc_px=float(max_coc_px))
    generator_of_scenes = SyntheticSceneGenerator(size, size, **(scene or {}))
    out = Path(out_dir)
    written = 0
    for index in progress_bar(range(count), desc="synthetic scenes", unit="scene"):
        name = f"{index:06d}"
        paths = [out / "image" / f"{name}.png", out / "disparity" / f"{name}.npy", out / "mask" / f"{name}.png"]
        render_json = out / "bokeh" / f"{name}.json"
        if all(p.exists() for p in paths) and render_json.exists():
            continue  # resumable: this scene is complete
        generator = sample_generator(seed, index)
        synthetic = generator_of_scenes(generator)
        focus = _scene_focus(synthetic, "subject")
        K = float(K_range[0] + (K_range[1] - K_range[0]) * float(torch.rand((), generator=generator)))
        bokeh = render_scene(synthetic, focus, renderer.blur_px(K), gamma=renderer.gamma, aperture=renderer.aperture)
        write_image(paths[0], synthetic.image)
        write_disparity(paths[1], synthetic.disparity)
        write_image(paths[2], synthetic.subject_mask.float())
        write_image(out / "bokeh" / f"{name}.png", bokeh)
        atomic_write_text(render_json, json.dumps({"focus_disparity": focus, "K": K, "max_coc_px": max_coc_px}))
        written += 1
    logger.info("synthetic folder %s: %d scenes written, %d already present", out, written, count - written)
    return out


def build_synthetic_benchmark(
    out_dir: str | os.PathLike,
    degradation: Degradation,
    *,
    num_scenes: int = 24,
    size: int = 256,
    K_values: Sequence[float] = (8.0, 16.0, 32.0),
    focus_rules: Sequence[str] = ("subject", "background"),
    seed: int = 0,
    max_coc_px: float = 12.0,
    renderer: BokehRenderer | None = None,
    scene: dict | None = None,
    degradation_info: dict | None = None,
) -> Path:
    """Synthetic benchmark with exact ground truth: each scene's degraded all-in-focus input (one per scene),
    rendered with the layered renderer at every (focus rule × K) — ``num_scenes·|rules|·|K|`` samples.
    ``degradation_info`` (see :func:`describe_degradation`) is recorded in the index's meta."""
    unknown = [rule for rule in focus_rules if rule not in ("subject", "background")]
    if unknown:
        raise ParameterError(f"focus rules must be 'subject' or 'background', got {unknown}")
    renderer = dataclasses.replace(renderer or BokehRenderer(), max_coc_px=float(max_coc_px))
    scenes = SyntheticSceneGenerator(size, size, **(scene or {}))
    out = Path(out_dir)
    samples = []
    for index in progress_bar(range(num_scenes), desc="synthetic benchmark", unit="scene"):
        name = f"scene{index:04d}"
        hq, lq = out / "hq" / f"{name}.png", out / "lq" / f"{name}.png"
        disparity_path, mask_path = out / "disparity" / f"{name}.npy", out / "mask" / f"{name}.png"
        cases = [(rule, float(K)) for rule in focus_rules for K in K_values]
        targets = {case: out / "target" / f"{name}_{case[0]}_K{case[1]:g}.png" for case in cases}
        focus_path = out / "focus" / f"{name}.json"
        if not (all(p.exists() for p in (hq, lq, disparity_path, mask_path, focus_path, *targets.values()))):
            synthetic = scenes(sample_generator(seed, index))
            focus = {rule: _scene_focus(synthetic, rule) for rule in focus_rules}
            write_image(hq, synthetic.image)
            write_image(lq, degradation(synthetic.image[None], sample_generator(seed, index, "degradation"))[0])
            write_disparity(disparity_path, synthetic.disparity)
            write_image(mask_path, synthetic.subject_mask.float())
            for (rule, K), path in targets.items():
                blur = renderer.blur_px(K)
                write_image(
                    path, render_scene(synthetic, focus[rule], blur, gamma=renderer.gamma, aperture=renderer.aperture)
                )
            atomic_write_text(focus_path, json.dumps(focus))
        focus = json.loads(focus_path.read_text())
        for (rule, K), path in targets.items():
            samples.append(
                BenchmarkSample(
                    id=path.stem, task="bokeh", lq=lq, target=path, hq=hq, disparity=disparity_path, mask=mask_path,
                    focus_disparity=focus[rule], K=K, extra={"scene": name, "focus_rule": rule},
                )
            )  # fmt: skip
    meta = {
        "seed": seed, "size": size, "num_scenes": num_scenes, "K_values": list(K_values),
        "focus_rules": list(focus_rules), "max_coc_px": max_coc_px, **_degradation_meta(degradation, degradation_info),
    }  # fmt: skip
    return write_benchmark_index(out, "synthetic", samples, meta)
