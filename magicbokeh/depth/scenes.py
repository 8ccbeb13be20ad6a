"""Synthetic (clean, degraded, exact disparity) triples for distillation smoke runs and depth evaluation.

Why this lives here and not in ``data/``: :class:`magicbokeh.data.datasets.DepthDistillDataset` serves the
(clean, degraded) pairs of the distillation contract and drops the scene's disparity; depth *evaluation* against
ground truth needs that disparity too. This adds only that key on top of the shared scene generator and
degradation, and reads no files. Real photos without ground truth go through ``DepthDistillDataset``.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from magicbokeh.data.synthetic import SyntheticSceneGenerator
from magicbokeh.errors import ParameterError
from magicbokeh.utils.seeding import sample_generator


class SyntheticDepthPairs(Dataset):
    """``{"clean", "degraded", "disparity", "meta"}`` for ``length`` seeded synthetic scenes of side ``crop_size``.

    Sample ``i`` draws its scene and its degradation from ``sample_generator(seed, i)``: any sample can be rebuilt
    alone. ``degradation`` is a callable ``(B×3×H×W, generator) → B×3×H×W`` (``RealESRGANDegradation``; use
    ``resize_back=True`` so the degraded image keeps the clean image's size); ``None`` returns the clean image.
    The argument names are those of ``DepthDistillDataset`` so one config node can switch between the two.
    """

    def __init__(self, length: int, crop_size: int = 64, degradation=None, seed: int = 0) -> None:
        if length < 1:
            raise ParameterError(f"SyntheticDepthPairs needs length ≥ 1, got {length}")
        self.length, self.seed = int(length), int(seed)
        self.scenes = SyntheticSceneGenerator(int(crop_size), int(crop_size))
        self.degradation = degradation

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        generator = sample_generator(self.seed, index)
        scene = self.scenes(generator)
        clean = scene.image.float()
        degraded = clean if self.degradation is None else self.degradation(clean[None], generator)[0].float()
        return {
            "clean": clean,
            "degraded": degraded,
            "disparity": scene.disparity.float(),
            "meta": {"index": int(index), "source": "synthetic"},
        }
