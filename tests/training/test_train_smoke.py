"""train(cfg) end to end with the real configs, the real tiny network and synthetic data, at toy sizes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from magicbokeh.models import MagicBokehModel
from magicbokeh.training.tracking import read_metrics
from magicbokeh.training.train import train
from magicbokeh.utils.config import compose_config
from magicbokeh.utils.results import Table, read_results

REPO = Path(__file__).resolve().parents[2]
ABLATIONS = ["ablation_no_fama", "ablation_joint", "ablation_no_da_depth", "sr_only", "bokeh_only"]


def _toy_overrides(tmp_path, run_id: str) -> list[str]:
    return [
        f"paths.output_dir={tmp_path}",
        f"run_id={run_id}",
        "logger=none",
        "model=tiny",
        "data=synthetic",
        "data.crop_size=16",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.val_bokeh.length=2",
        "trainer.max_steps=4",
        "trainer.log_every=1",
        "trainer.schedule.pretrain_steps=1",
        "trainer.base_pretrain.steps=2",
        "trainer.base_pretrain.batch_size=2",
        "trainer.val_every=2",
        "trainer.checkpoint_every=2",
        "trainer.validation.batch_size=2",
        "trainer.validation.lpips=false",
        "trainer.loss.random_backbone=true",
    ]


@pytest.mark.slow
def test_smoke_config_trains_evaluates_and_saves(tmp_path):
    cfg = compose_config("train", ["experiment=smoke", *_toy_overrides(tmp_path, "toy")])
    # An earlier run's initial scores in the same directory must not stand in for this run's own.
    stale = tmp_path / "smoke" / "toy" / "init_eval.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"bokeh/psnr": -1.0, "sr/psnr": -1.0}))
    results = train(cfg)
    run_dir = Path(results["run_dir"])
    assert run_dir == stale.parent
    assert results["steps_per_s"] > 0
    phases = [r["phase"] for r in read_metrics(run_dir) if "phase" in r]
    assert phases == ["sr_pretrain", "bokeh", "bokeh", "sr"]  # smoke: bokeh:SR = 2:1
    # Final tables, validation and test: the network's columns + the smoke's wavelet-colour-fixed ones × two tasks.
    final = json.loads((run_dir / "final_eval.json").read_text())
    assert set(final) == {"validation", "test"} and final == results["scores"]
    fixed = ["initialisation + wavelet colour fix", "trained + wavelet colour fix"]
    for scores in final.values():
        assert set(scores) == {"upsampled input", "initialisation", "trained", "trained, defocus zeroed", *fixed}
        assert all({"bokeh/psnr", "sr/psnr"} <= set(column) for column in scores.values())
        assert all(value > 0 for value in scores["initialisation"].values())
        for name, source in zip(fixed, ["initialisation", "trained"], strict=True):
            expected = {task: scores[source][f"{task}_color_fixed"] for task in ("bokeh/psnr", "sr/psnr")}
            assert scores[name] == expected
    # The two sets are different images (another seed, another photo): their input baselines differ.
    assert final["validation"]["upsampled input"] != final["test"]["upsampled input"]
    report = (run_dir / "final_eval.md").read_text()
    assert report.index("Validation set") < report.index("Test set") and "| bokeh |" in report
    assert json.loads((run_dir / "init_test_eval.json").read_text()) == final["test"]["initialisation"]
    # experiment=smoke writes its results file (here the tests' results folder, see conftest.py) with both tables.
    document = read_results("smoke")
    assert set(document["tables"]) == {"validation", "test", "run"} and document["seed"] == 42
    for set_name in ("validation", "test"):
        table = Table.from_json(document["tables"][set_name])
        assert table.columns[1:] == list(final[set_name])
        assert table.rows[1] == ["sr", *(column["sr/psnr"] for column in final[set_name].values())]
        assert table.markdown() in report
    assert document["figures"]["timing"]["steps"] == 4
    assert (run_dir / "val" / "step_000002_bokeh.png").is_file()
    # The final model and the checkpoint's exported model load with the model's own loader.
    final = MagicBokehModel.from_pretrained(run_dir / "final")
    assert isinstance(final, MagicBokehModel)
    # It records how it was trained, so evaluation can tell a benchmark degraded another way.
    assert final.training_info["degradation"]["scale"] == 2 and final.training_info["crop_size"] == 16
    assert final.training_info["experiment"] == "smoke" and final.training_info["max_coc_px"] == 12.0
    assert (run_dir / "checkpoints" / "step_000004" / "model" / "config.json").is_file()


@pytest.mark.slow
def test_each_phase_updates_only_its_group_in_the_real_network(tmp_path):
    from tests.training.test_trainer import PHASES, _trainer

    model = instantiate(compose_config("train", ["model=tiny"]).model)
    no_warmup = {name: dataclasses.replace(phase, warmup_steps=0) for name, phase in PHASES.items()}  # lr 0 at step 0
    trainer = _trainer(tmp_path, model=model, size=16, phases=no_warmup)
    for phase in ("sr_pretrain", "bokeh", "sr"):
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        trainer.train_step(phase)
        changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
        assert changed, phase
        outside = changed - set(model.phase_parameter_names(phase))
        assert not outside, (phase, sorted(outside)[:3])


@pytest.mark.parametrize("experiment", ["paper", *ABLATIONS])
def test_paper_and_ablations_compose_with_toy_overrides(tmp_path, experiment):
    cfg = compose_config("train", [f"experiment={experiment}", *_toy_overrides(tmp_path, experiment)])
    assert cfg.model.name == "tiny" and cfg.data.crop_size == 16
    assert cfg.task_name == experiment


@pytest.mark.slow
def test_multirun_over_ablations_launches(tmp_path):
    """`scripts/train.py -m experiment=a,b,...` runs every job (toy sizes, one step each)."""
    overrides = [o for o in _toy_overrides(tmp_path, "sweep") if not o.startswith(("trainer.max_steps", "trainer.val"))]
    command = [
        sys.executable,
        str(REPO / "scripts" / "train.py"),
        "-m",
        "experiment=ablation_no_fama,ablation_joint,sr_only",
        *overrides,
        "trainer.max_steps=1",
        "trainer.val_every=0",
        "trainer.checkpoint_every=0",
        "trainer.defocus_depth=null",  # the paper's DA-depth weights are not here (tested in test_defocus_source)
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # One sweep folder; each job's folder names its experiment.
    finals = sorted(p.parent.name for p in tmp_path.glob("multirun/sweep/*/final_eval.md"))
    assert finals == ["0_ablation_no_fama", "1_ablation_joint", "2_sr_only"], done.stdout[-2000:]


VSD_ON = ["trainer.vsd.enabled=true", "trainer.phases.sr_pretrain.vsd_weight=1.0", "trainer.phases.sr.vsd_weight=1.0"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], VSD_ON], ids=["plain", "with_vsd"])
def test_two_process_cpu_launch_trains_as_one_ddp_job(tmp_path, extra):
    """Two ranks on CPU (torchrun → accelerate MULTI_CPU over gloo): phases leave groups without gradients, both
    ranks really join one job (not two lone runs), finish, and share one run directory; also with the VSD
    regulariser, whose fake score is a second DDP-wrapped network."""
    overrides = [o for o in _toy_overrides(tmp_path, "ddp") if not o.startswith("trainer.val_every")] + extra
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "scripts" / "train.py"), "experiment=smoke", *overrides, "trainer.val_every=0",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    log = done.stdout + done.stderr
    assert "MULTI_CPU, process 0 of 2" in log and "MULTI_CPU, process 1 of 2" in log, log[-3000:]
    assert "parameters identical on all 2 ranks" in log, log[-3000:]  # gradients were all-reduced
    run_dir = tmp_path / "smoke" / "ddp"
    phases = [r["phase"] for r in read_metrics(run_dir) if "phase" in r]
    assert phases == ["sr_pretrain", "bokeh", "bokeh", "sr"]  # rank 0 writes; smoke: bokeh:SR = 2:1
    vsd_logged = [r["phase"] for r in read_metrics(run_dir) if "vsd" in r]
    assert vsd_logged == (["sr_pretrain", "sr"] if extra else [])
    assert (run_dir / "final" / "model.safetensors").is_file()
    checkpoint = run_dir / "checkpoints" / "step_000004"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
