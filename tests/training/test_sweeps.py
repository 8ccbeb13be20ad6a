"""Sweeps through Hydra's submitit launcher (``hydra/launcher=local``: submitit's local executor, the machinery of
``hydra/launcher=slurm``): jobs run to completion in readable folders, each with its own tracker id."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from magicbokeh.training.tracking import RUN_UID_FILE
from magicbokeh.utils.config import compose_config
from tests.training.test_train_smoke import REPO, _toy_overrides


@pytest.mark.slow
def test_submitit_local_sweep_runs_two_tasks_with_one_run_id_and_distinct_tracker_ids(tmp_path):
    toy = [o for o in _toy_overrides(tmp_path, "unused") if not o.startswith(("run_id", "logger", "trainer.max_steps"))]
    command = [
        sys.executable, str(REPO / "scripts" / "train.py"), "-m", "hydra/launcher=local",
        "experiment=sr_only,bokeh_only", "run_id=shared", *toy, "logger=wandb", "logger.mode=offline",
        "trainer.mixed_precision=no", "trainer.max_steps=1", "trainer.val_every=0", "trainer.checkpoint_every=0",
        "trainer.defocus_depth=null",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    sweep = tmp_path / "multirun" / "shared"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [job.name for job in jobs] == ["0_sr_only", "1_bokeh_only"]
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # both ran as submitit jobs, to the end
    uids = []
    for job in jobs:
        assert (job / "final_eval.md").is_file() and (job / "final" / "model.safetensors").is_file()
        uid = (job / RUN_UID_FILE).read_text().strip()
        (wandb_run,) = (job / "wandb").glob("offline-run-*")
        assert wandb_run.name.endswith(f"-{uid}")  # the wandb run id is the job's stored id
        uids.append(uid)
    assert len(set(uids)) == 2


def test_readable_sweep_folders_and_one_default_run_dir_per_launch(monkeypatch):
    sweep = OmegaConf.to_container(compose_config("train", ["experiment=smoke"]).hydra.sweep, resolve=False)
    assert sweep["subdir"] == "${hydra.job.num}_${task_name}"  # e.g. 0_ablation_no_fama
    # The default run_id is shared by every rank of one torchrun launch (their common rendezvous id) ...
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "3f2a9c1e-7b7a-4c55-9d0e-0123456789ab")
    assert compose_config("train").run_id == "launch-3f2a9c1e"
    # ... and is the start time in a single process (a static rendezvous has no shared id: pass run_id=NAME).
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    assert compose_config("train").run_id[:2] == "20"


def test_two_tasks_with_one_run_id_get_their_own_directory_and_tracker_id(tmp_path):
    """Single runs: outputs/<task>/<run_id>, and a fresh UUID per run directory as the wandb id (the folder name,
    the same for both, was the id before)."""
    from magicbokeh.training.tracking import run_uid, tracker_settings

    ids = []
    for experiment in ("sr_only", "bokeh_only"):
        cfg = compose_config("train", [f"experiment={experiment}", f"paths.output_dir={tmp_path}", "run_id=same"])
        run_dir = tmp_path / experiment / "same"
        assert cfg.hydra.run.dir == str(run_dir)
        _, kwargs = tracker_settings({"name": "wandb"}, run_dir, run_uid(run_dir, resuming=False), None)
        ids.append(kwargs["wandb"]["id"])
    assert len(set(ids)) == 2
