"""The distillation entry point: configs instantiate, the CLI runs end to end, user errors exit 2 (no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from magicbokeh.data.datasets import DepthDistillDataset
from magicbokeh.depth import DepthModel
from magicbokeh.utils.config import compose_config

REPO = Path(__file__).resolve().parents[2]


def test_smoke_config_instantiates_model_and_data():
    cfg = compose_config("depth", ["experiment=depth_smoke", "data.train.length=2", "data.train.crop_size=28"])
    model = instantiate(cfg.depth)
    assert isinstance(model, DepthModel) and model.input_size is None
    train = instantiate(cfg.data.train)
    sample = train[1]
    assert sample["clean"].shape == sample["degraded"].shape == (3, 28, 28)
    assert sample["disparity"].shape == (1, 28, 28)
    assert torch.equal(train[1]["degraded"], sample["degraded"])  # seeded per index


def test_synthetic_pairs_without_degradation_are_clean():
    sample = DepthDistillDataset(None, length=1, crop_size=24)[0]
    assert torch.equal(sample["clean"], sample["degraded"])
    assert 0 <= sample["disparity"].min() and sample["disparity"].max() <= 1


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_depth.py"), f"paths.output_dir={tmp_path}", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_runs_and_prints_the_comparison(tmp_path):
    result = _run(
        [
            "experiment=depth_smoke",
            "run_id=cli",
            "distill.steps=4",
            "distill.eval_every=2",
            "distill.checkpoint_every=2",
            "data.train.length=8",
            "data.train.crop_size=28",
            "data.eval.length=2",
            "data.eval.crop_size=28",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "un-distilled student: AbsRel" in result.stdout and "distilled student   : AbsRel" in result.stdout
    run_dir = tmp_path / "train_depth_smoke" / "cli"
    assert json.loads((run_dir / "depth_results.json").read_text())["steps"] == 4
    assert (run_dir / "student" / "model.safetensors").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002", "step_000004"]


@pytest.mark.slow
def test_cli_missing_weights_is_a_one_line_error(tmp_path):
    result = _run(["depth=small", f"paths.depth_anything={tmp_path}/nope.pth"], tmp_path)
    assert result.returncode == 2
    assert "error: missing weights" in result.stderr and "paths.depth_anything" in result.stderr
    assert "Traceback" not in result.stderr
