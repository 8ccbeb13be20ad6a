"""A 2-process CPU training run killed mid-run and resumed by a separate launch equals the uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from magicbokeh.training.tracking import read_metrics
from tests.training.test_train_smoke import REPO, _toy_overrides

KILL_AT_STEP = 5  # after the step-4 checkpoint, with step 5 already logged


def _launch(script: Path, tmp_path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 <script> experiment=smoke <toy overrides> ...`` (gloo on CPU)."""
    toy = [o for o in _toy_overrides(tmp_path, "unused") if not o.startswith(("run_id", "trainer.max_steps"))]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
        "experiment=smoke", *toy, "data.val_sr.length=2", "trainer.max_steps=6", "trainer.val_every=0",
        "trainer.checkpoint_every=2", *overrides,
    ]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)


def _losses(run_dir: Path) -> list[tuple[int, str, float]]:
    return [(r["step"], r["phase"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


@pytest.mark.slow
def test_two_process_run_killed_and_resumed_equals_the_uninterrupted_run(tmp_path):
    done = _launch(REPO / "scripts" / "train.py", tmp_path / "reference", "run_id=reference")
    assert done.returncode == 0, done.stderr[-4000:]
    reference = tmp_path / "reference" / "smoke" / "reference"

    # No run_id: the two ranks still share one run directory (the launch's rendezvous id names it).
    killed = _launch(REPO / "tests" / "training" / "killed_train.py", tmp_path / "run", env={"KILL_AT_STEP": "5"})
    assert killed.returncode != 0, "the killed launch finished"
    (run_dir,) = (tmp_path / "run" / "smoke").iterdir()
    assert run_dir.name.startswith("launch-"), run_dir
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_000004"]  # smoke keeps the last one
    assert {p.name for p in (run_dir / "checkpoints" / "step_000004").glob("random_states_*")} == {
        "random_states_0.pkl", "random_states_1.pkl"
    }  # every rank's RNG state
    assert [step for step, _, _ in _losses(run_dir)] == [1, 2, 3, 4, 5]  # step 5 logged after the checkpoint
    assert not (run_dir / "final").exists()

    resumed = _launch(REPO / "scripts" / "train.py", tmp_path / "run", f"run_id={run_dir.name}", "resume=latest")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    expected, got = _losses(reference), _losses(run_dir)
    assert [step for step, _, _ in got] == [1, 2, 3, 4, 5, 6]  # the killed run's step 5 dropped, not duplicated
    assert got == expected  # bit-exact losses (rank-averaged) of every step, phases included
    final, reference_final = (load_file(str(d / "final" / "model.safetensors")) for d in (run_dir, reference))
    assert final.keys() == reference_final.keys()
    assert all(torch.equal(final[name], reference_final[name]) for name in final)


@pytest.mark.slow
def test_every_rank_restores_its_rng_and_all_ranks_skip_together(tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "training" / "ddp_checkpoint_check.py"), str(tmp_path / "checkpoints"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in (0, 1):
        assert f"rank {rank}: RNG restored, non-finite update skipped" in done.stdout, done.stdout[-2000:]
