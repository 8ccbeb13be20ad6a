"""Generated data and outputs are ignored by git; what ships is not."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

GENERATED = [
    "outputs/render/2026-01-01_00-00-00/photo.png",
    "outputs/train/smoke/checkpoints/final/model/model.safetensors",
    "multirun/2026-01-01/0/.hydra/config.yaml",
    "wandb/offline-run-1/files/config.yaml",
    "data/benchmarks/synthetic/index.json",
    "weights/stable-diffusion-2-1-base/unet/config.json",
    "results/scratch/inference_benchmark.json",
]
SHIPPED = [
    "data/samples/synthetic/image/000000.png",
    "data/samples/photos/chelsea.jpg",
    "data/pretrained/smoke_vae.safetensors",
    "results/inference_small_images.json",
    "configs/render.yaml",
]


def _ignored(paths):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("this test reads the repository's .gitignore through git: run it in a git checkout")
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(paths), capture_output=True, text=True,
        cwd=ROOT, check=False,
    )  # fmt: skip
    return set(result.stdout.split())


def test_generated_files_are_ignored_and_shipped_ones_are_not():
    assert _ignored(GENERATED) == set(GENERATED)
    assert _ignored(SHIPPED) == set()
