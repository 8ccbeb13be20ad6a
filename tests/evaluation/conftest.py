"""Toy benchmarks and tiny weights for the evaluation tests (small images, random-weight networks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from magicbokeh.data.benchmark_index import BenchmarkSample, write_benchmark_index
from magicbokeh.data.io import write_disparity, write_image
from magicbokeh.depth import build_depth_model
from magicbokeh.utils.config import compose_config

SIZE = 32


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return images
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def toy_renderer(images, disparity, focus, K):
    """Stand-in for the classical renderer: pixels off the focus plane blurred with σ ∝ K, the rest sharp."""
    blurred = gaussian_blur(images, float(K) / 8.0)
    far = (disparity - float(focus)).abs() > 0.1
    return torch.where(far, blurred, images)


def scene(seed: int, height: int = SIZE, width: int = SIZE):
    g = torch.Generator().manual_seed(seed)
    hq = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(height, width), mode="bicubic").clamp(0, 1)
    hq = (hq + 0.15 * torch.rand(hq.shape, generator=g)).clamp(0, 1)  # texture so blur is measurable
    disparity = torch.full((1, 1, height, width), 0.8)
    disparity[..., : width // 2] = 0.2  # left half far (background), right half near (subject)
    return hq, disparity


def make_benchmark(
    root: Path,
    *,
    scenes: int = 2,
    K_values=(0.0, 8.0, 16.0, 32.0),
    height: int = SIZE,
    width: int = SIZE,
    with_disparity: bool = True,
    meta: dict | None = None,
) -> Path:
    """Scenes × K; targets rendered by the toy renderer, LQ = 2× down-up of the HQ image, a subject mask (right
    half). Without disparity the index stores no map and no focus (the paper's EBB400-LQ layout)."""
    samples = []
    for number in range(scenes):
        hq, disparity = scene(number, height, width)
        write_image(root / "hq" / f"s{number}.png", hq[0])
        write_disparity(root / "disparity" / f"s{number}.npy", disparity[0])
        write_image(root / "mask" / f"s{number}.png", (disparity[0] > 0.5).float())
        small = F.interpolate(hq, scale_factor=0.5, mode="area")
        lq = F.interpolate(small, size=(height, width), mode="bicubic").clamp(0, 1)
        for K in K_values:
            sample_id = f"s{number}_K{K:g}"
            target = toy_renderer(hq, disparity, 0.8, K)
            write_image(root / "target" / f"{sample_id}.png", target[0])
            write_image(root / "lq" / f"{sample_id}.png", lq[0])
            samples.append(
                BenchmarkSample(
                    id=sample_id, task="bokeh", lq=root / "lq" / f"{sample_id}.png",
                    target=root / "target" / f"{sample_id}.png", hq=root / "hq" / f"s{number}.png",
                    disparity=root / "disparity" / f"s{number}.npy" if with_disparity else None,
                    mask=root / "mask" / f"s{number}.png", focus_disparity=0.8 if with_disparity else None, K=K,
                )
            )  # fmt: skip
    write_benchmark_index(root, "toy", samples, meta if meta is not None else {"test": True})
    return root


@pytest.fixture
def benchmark(tmp_path):
    """Two 32 px scenes × K ∈ {0, 8, 16, 32}, with disparity maps and focus values."""
    return make_benchmark(tmp_path / "bench")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Two tiny MagicBokeh checkpoints (different random weights; the first says it was trained at ×2) and a tiny
    depth network saved to disk, as a user would have them."""
    folder = tmp_path_factory.mktemp("weights")
    for name, seed in (("ckpt", 0), ("other_ckpt", 1)):
        torch.manual_seed(seed)
        model = instantiate(compose_config("train", ["model=tiny"]).model)
        model.training_info = {
            "experiment": "smoke", "degradation_preset": "realesrgan", "degradation": {"scale": 2.0},
            "crop_size": 32, "max_coc_px": 12.0,
        }  # fmt: skip
        model.save_pretrained(folder / name)
    torch.manual_seed(0)
    build_depth_model("tiny", None, input_size=None).save(folder / "depth")
    return folder
