"""Readers for the depth benchmarks of the DA-depth protocol (paper Table S.1): NYUv2 and KITTI, Eigen test splits.

Both use the split-file layout most depth codebases export (BTS, AdaBins, Depth Anything's metric evaluation): one
line per sample, ``<image path> <depth path> [focal]``, paths relative to ``image_root`` / ``depth_root``.

* **NYUv2** (Silberman et al. 2012; 654 Eigen test images, 480×640): depth PNG, uint16 millimetres; evaluation
  crop rows 45:471, columns 41:601 (Eigen et al. 2014), depth range (1e-3, 10] m.
* **KITTI** (Geiger et al. 2012; 697 Eigen test images): projected LiDAR depth PNG, uint16 metres × 256, 0 = no
  measurement (lines whose depth is ``None`` are skipped); Garg crop (rows 0.4081–0.9919 H, columns 0.0359–0.9640 W),
  depth range (1e-3, 80] m.

Each sample is ``{"image": 3×H×W [0,1], "depth": 1×H×W metres (0 = invalid), "valid": 1×H×W bool (measured and
inside the crop), "meta": {...}}``. Download and licence notes are in ``data/README.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from magicbokeh.data.io import read_image
from magicbokeh.errors import DatasetError, ImageReadError


@dataclass(frozen=True)
class DepthBenchmarkSpec:
    """How one benchmark stores depth and which pixels it evaluates."""

    name: str
    depth_scale: float  # stored integer / depth_scale = metres
    max_depth: float
    crop: tuple[float, float, float, float]  # top, bottom, left, right as fractions of H and W


NYUV2 = DepthBenchmarkSpec("nyuv2", depth_scale=1000.0, max_depth=10.0, crop=(45 / 480, 471 / 480, 41 / 640, 601 / 640))
KITTI = DepthBenchmarkSpec(
    "kitti", depth_scale=256.0, max_depth=80.0, crop=(0.40810811, 0.99189189, 0.03594771, 0.96405229)
)
SPECS = {spec.name: spec for spec in (NYUV2, KITTI)}


def evaluation_crop(spec: DepthBenchmarkSpec, height: int, width: int) -> torch.Tensor:
    """Boolean ``1×H×W`` mask of the benchmark's standard evaluation crop."""
    top, bottom, left, right = spec.crop
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[:, int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = True
    return mask


def read_depth_png(path: Path, depth_scale: float) -> torch.Tensor:
    """A uint16 depth PNG → ``1×H×W`` float32 metres (0 stays 0 = invalid)."""
    if not path.is_file():
        raise ImageReadError(f"depth map '{path}' does not exist")
    raw = cv2.imdecode(np.frombuffer(path.read_bytes(), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ImageReadError(f"depth map '{path}' is corrupt or not an image")
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise ImageReadError(f"depth map '{path}' must be a single-channel 16-bit PNG, got {raw.dtype} {raw.shape}")
    return torch.from_numpy(raw.astype(np.float32) / depth_scale)[None]


class DepthBenchmarkDataset(Dataset):
    """NYUv2 or KITTI test pairs from a split file (see the module docstring for the layout)."""

    def __init__(
        self,
        name: str,
        split_file: str | os.PathLike,
        image_root: str | os.PathLike,
        depth_root: str | os.PathLike | None = None,
        limit: int | None = None,
    ) -> None:
        if name not in SPECS:
            raise DatasetError(f"unknown depth benchmark '{name}'; expected one of {sorted(SPECS)}")
        self.spec = SPECS[name]
        split_file, self.image_root = Path(split_file), Path(image_root)
        self.depth_root = Path(depth_root) if depth_root is not None else self.image_root
        if not split_file.is_file():
            raise DatasetError(f"{name} split file '{split_file}' does not exist")
        self.pairs: list[tuple[Path, Path]] = []
        for number, line in enumerate(split_file.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise DatasetError(f"'{split_file}' line {number}: expected '<image> <depth> [focal]', got '{line}'")
            if fields[1] == "None":  # KITTI frames without projected LiDAR ground truth
                continue
            self.pairs.append((self.image_root / fields[0].lstrip("/"), self.depth_root / fields[1].lstrip("/")))
        if limit is not None:
            self.pairs = self.pairs[:limit]
        if not self.pairs:
            raise DatasetError(f"'{split_file}' lists no sample with ground-truth depth")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        image_path, depth_path = self.pairs[index]
        image = read_image(image_path)
        depth = read_depth_png(depth_path, self.spec.depth_scale)
        if image.shape[-2:] != depth.shape[-2:]:
            raise DatasetError(
                f"size mismatch: image '{image_path}' is {tuple(image.shape[-2:])} but depth '{depth_path}' is "
                f"{tuple(depth.shape[-2:])}"
            )
        valid = (depth > 1e-3) & (depth <= self.spec.max_depth)
        valid &= evaluation_crop(self.spec, *depth.shape[-2:])
        return {
            "image": image,
            "depth": depth,
            "valid": valid,
            "meta": {"index": int(index), "image": str(image_path), "dataset": self.spec.name},
        }
