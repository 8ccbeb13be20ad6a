"""The study runner: configs → one training sweep → evaluations → the table (mean ± std over seeds, the paper's
value where comparable); a rerun after an interruption trains and scores only what is missing; every study's
command runs at micro size."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from magicbokeh.errors import ConfigError
from magicbokeh.evaluation.manifest import checkpoint_record
from magicbokeh.training.study import (
    check_training_configs,
    evaluation_state,
    evaluation_sweep_command,
    job_overrides,
    read_timing,
    run_stage_command,
    study_from_config,
    timed_stage,
    training_sweep_command,
)
from magicbokeh.training.study_report import study_figures, study_table, study_time, time_table
from magicbokeh.training.tracking import RUN_UID_FILE, read_metrics
from magicbokeh.utils.config import CONFIG_DIR, compose_config
from tests.training.test_train_smoke import REPO

STUDIES = sorted(path.stem for path in (CONFIG_DIR / "study").glob("*.yaml"))
# A few steps at 16 px: the smoke recipe's code paths, seconds per run. keep_last=2 leaves the step-2 checkpoint.
MICRO_TRAIN = [
    "trainer.max_steps=3", "trainer.schedule.pretrain_steps=1", "trainer.checkpoint_every=2", "trainer.keep_last=2",
    "data.crop_size=16", "data.batch_size=2", "data.val_bokeh.length=2", "data.val_sr.length=2",
    "trainer.validation.batch_size=2", "trainer.log_every=1",
]  # fmt: skip


def _micro_eval(tmp_path) -> list[str]:
    """One synthetic scene at 16 px, K 8 and 32, focus on the subject and on the background: 4 samples."""
    return [f"benchmark.root={tmp_path}/bench", "benchmark.build.size=16", "benchmark.build.num_scenes=1",
            "benchmark.build.K_values=[8,32]"]  # fmt: skip


def _as_list(key: str, overrides: list[str]) -> str:
    return f"{key}=[" + ",".join(f"'{override}'" for override in overrides) + "]"


def _study(tmp_path, *arguments: str, train=(), evaluate=()) -> subprocess.CompletedProcess:
    command = [
        sys.executable, str(REPO / "scripts" / "study.py"), *arguments, f"paths.output_dir={tmp_path}",
        f"figure={tmp_path}/figure.png", _as_list("train_overrides", [*MICRO_TRAIN, *train]),
        _as_list("eval_overrides", [*_micro_eval(tmp_path), *evaluate]),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "MAGICBOKEH_RESULTS_DIR": str(tmp_path)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.fixture
def tiny_model():
    import hydra
    import torch
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    return hydra.utils.instantiate(OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml"))


def _config(*overrides: str):
    return study_from_config(compose_config("study", list(overrides)))


# ---------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", STUDIES)
@pytest.mark.parametrize("scale", ["full", "smoke"])
def test_every_study_resolves_at_both_scales(name, scale, tmp_path):
    study = _config(f"study={name}", f"scale={scale}", f"paths.output_dir={tmp_path}")
    assert study.variants and len(study.seeds) == 3 and study.metrics
    assert study.out_dir == (tmp_path / "study" / f"{name}_{scale}").resolve()  # the same folder for every rerun
    first = study.variants[0].name
    assert [job.name for job in study.jobs][:2] == [f"{first}_seed0", f"{first}_seed1"]
    if scale == "smoke":
        assert study.experiment == "smoke" and study.benchmark == "synthetic"
    else:
        assert study.experiment == "paper" and study.benchmark == "ebb400_lq" == study.paper["benchmark"]
    rows = {variant.paper_row for variant in study.variants} - {None}
    assert rows and rows <= set(study.paper["rows"])  # each study reproduces at least one row of Table 2


def test_every_smoke_study_trains_the_one_shortened_smoke_recipe():
    shared = tuple(compose_config("study", []).smoke_training)
    assert "trainer.max_steps=300" in shared

    def own(name):  # the study's training overrides after the paths every study forwards
        overrides = _config(f"study={name}", "scale=smoke").train_overrides
        return tuple(item for item in overrides if not item.startswith("paths."))

    for name in STUDIES:
        assert own(name)[: len(shared)] == shared, name
    depth = own("ablation_depth")[len(shared) :]
    assert depth and all(item.startswith("trainer.defocus_depth.") for item in depth)  # its tiny depth models


def test_paper_rows_of_the_three_studies_are_the_papers_ablations():
    rows = {
        (name, variant.name): variant.paper_row
        for name in STUDIES
        for variant in _config(f"study={name}").variants
        if variant.paper_row
    }
    assert rows == {
        ("ablation_depth", "student_lq"): "full", ("ablation_depth", "teacher_lq"): "no_da_depth",
        ("ablation_fama", "hard"): "full", ("ablation_fama", "none"): "no_fama",
        ("ablation_strategy", "alternating"): "full", ("ablation_strategy", "joint"): "no_strategy",
    }  # fmt: skip


def test_selection_and_errors():
    study = _config("study=ablation_fama", "scale=smoke", "variants=[none,hard]", "seeds=[4,5]")
    assert [v.name for v in study.variants] == ["none", "hard"] and study.seeds == (4, 5)
    with pytest.raises(ConfigError, match="unknown or no variant"):
        _config("study=ablation_fama", "variants=[nope]")
    with pytest.raises(ConfigError, match="no scale 'huge'"):
        _config("study=ablation_fama", "scale=huge")
    with pytest.raises(ConfigError, match="distinct"):
        _config("study=ablation_fama", "seeds=[1,1]")


def test_variant_settings_beat_shared_ones_and_the_callers_beat_both():
    command_line, settings = job_overrides(
        ["logger=none", "trainer.max_steps=400", "trainer.schedule.pretrain_steps=150", "hydra.job.chdir=false"],
        ["trainer.schedule.pretrain_steps=0", "trainer.schedule.cycle=[joint]", "model.fama.mask=levels:3"],
        ["trainer.max_steps=3", "+trainer.extra.note='a b'"],
    )
    assert command_line == ["logger=none", "hydra.job.chdir=false"]  # what only a command line can hold
    assert settings == {
        "trainer": {"max_steps": 3, "schedule": {"pretrain_steps": 0, "cycle": ["joint"]}, "extra": {"note": "a b"}},
        "model": {"fama": {"mask": "levels:3"}},
    }
    with pytest.raises(ConfigError, match="config-group choice"):
        job_overrides([], ["model=sd21"], [])
    with pytest.raises(ConfigError, match="config-group choice"):
        job_overrides([], ["seed=0,1"], [])


def test_one_sweep_per_stage_with_a_file_per_job(tmp_path):
    study = _config("study=ablation_strategy", "scale=smoke", f"paths.output_dir={tmp_path}", "seeds=[0,1]")
    command = training_sweep_command(study, study.jobs, "slurm", ["hydra.launcher.partition=gpu"], python="python")
    names = [job.name for job in study.jobs]
    assert command[:3] == ["python", str(REPO / "scripts" / "train.py"), "--multirun"]
    assert "hydra/launcher=slurm" in command and "experiment=smoke" in command
    assert f"+study_run={','.join(names)}" in command and "hydra.sweep.subdir=${study_run.name}" in command
    folder = study.out_dir / "sweep" / "train" / "study_run"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(names)
    joint = yaml.safe_load((folder / "joint_seed1.yaml").read_text())
    assert joint["seed"] == 1 and joint["resume"] is None and joint["study_run"]["name"] == "joint_seed1"
    assert joint["results_name"] is None  # never the experiment's committed results file (results/smoke.json)
    assert joint["trainer"]["schedule"] == {"pretrain_steps": 0, "cycle": ["joint"], "ratio": [1]}  # variant wins
    assert joint["trainer"]["max_steps"] == 300  # the shared smoke_training in configs/study.yaml
    # A later sweep's group holds only its own jobs.
    training_sweep_command(study, study.jobs[:1], "local", [])
    assert [p.stem for p in folder.glob("*.yaml")] == [names[0]]
    command = evaluation_sweep_command(study, study.jobs[:1], "basic", [])
    assert "benchmark=synthetic" in command and "methods=[model]" in command
    evaluation = yaml.safe_load((study.out_dir / "sweep" / "evaluate" / "study_eval" / f"{names[0]}.yaml").read_text())
    assert evaluation["ckpt"] == str(study.jobs[0].final_model) and evaluation["degradation"] == {"scale": 2}


def test_table_mean_std_and_the_paper_only_on_its_benchmark(tmp_path):
    def seeds(psnr, lpips):
        return {seed: {"psnr_y": p, "lpips": lp} for seed, (p, lp) in enumerate(zip(psnr, lpips, strict=True))}

    scores = {
        "hard": seeds([24.0, 24.4, 24.2], [0.30, 0.28, None]),
        "none": seeds([23.0, 23.5, 23.1], [0.31, 0.33, 0.32]),
    }
    metrics = "study.table.metrics=[psnr_y,lpips]"
    on_paper = _config("study=ablation_fama", "variants=[hard,none]", metrics, f"paths.output_dir={tmp_path}")
    figures = study_figures(on_paper, scores)
    hard = figures["variants"]["hard"]["metrics"]
    assert hard["psnr_y"]["mean"] == pytest.approx(24.2) and hard["psnr_y"]["std"] == pytest.approx(0.2)
    assert hard["lpips"]["seeds"] == 2 and hard["lpips"]["std"] == pytest.approx(statistics.stdev([0.30, 0.28]))
    assert hard["psnr_y"]["paper"] == 24.23 and figures["variants"]["none"]["metrics"]["lpips"]["paper"] == 0.2798
    table = study_table(figures)
    assert table.columns == ["variant", "paper row", "psnr_y ↑", "psnr_y (paper)", "lpips ↓", "lpips (paper)"]
    assert table.rows[0][:4] == ["hard", "FAMA ✓ · strategy ✓ · DA depth ✓", "24.20 ± 0.20", "24.23"]
    assert table.rows[1][4:] == ["0.320 ± 0.010", "0.280"]
    elsewhere = _config("study=ablation_fama", "scale=smoke", "variants=[hard,none]",
                        "study.scales.smoke.table.metrics=[psnr_y,lpips]")  # fmt: skip
    table = study_table(study_figures(elsewhere, scores))
    assert table.columns == ["variant", "paper row", "psnr_y ↑", "lpips ↓"]  # another benchmark: no paper values


def test_an_interrupted_stage_still_counts_towards_the_study_time(tmp_path):
    study = _config("study=ablation_fama", "scale=smoke", f"paths.output_dir={tmp_path}")
    study.out_dir.mkdir(parents=True)
    with pytest.raises(ConfigError), timed_stage(study, "train", ["hard_seed0", "none_seed0"]):
        raise ConfigError("the training step failed")  # as run_stage_command raises when the sweep dies
    with timed_stage(study, "train", ["none_seed0"]):
        pass
    records = read_timing(study)
    assert [(r["jobs"], r["completed"]) for r in records] == [
        (["hard_seed0", "none_seed0"], False), (["none_seed0"], True)
    ]  # fmt: skip
    time = study_time(records)
    assert time["stages"]["train"] == {"seconds": records[0]["seconds"] + records[1]["seconds"], "invocations": 2,
                                       "interrupted": 1}  # fmt: skip
    assert time["stages"]["prepare"] == {"seconds": 0, "invocations": 0, "interrupted": 0}
    table = time_table(time)
    assert [row[0] for row in table.rows] == ["prepare", "train", "evaluate", "total"]
    assert table.rows[-1][-1] == pytest.approx(time["total_seconds"] / 60)


class _Stopped(Exception):
    pass


def _process_is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie no longer runs: it waits for init to reap it


def test_a_stopped_study_stops_its_sweeps_jobs_too(tmp_path):
    """A stage's sweep runs its launcher jobs in subprocesses of its own (submitit's local launcher): when the study
    is stopped, those must stop too, not train on unseen."""
    pid_file = tmp_path / "job.pid"
    sweep = (
        "import subprocess, sys; job = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        f"open({str(pid_file)!r}, 'w').write(str(job.pid)); job.wait()"
    )

    def stop_once_the_job_runs() -> None:
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    def raise_stopped(signum, frame):
        raise _Stopped

    previous = signal.signal(signal.SIGUSR1, raise_stopped)
    try:
        threading.Thread(target=stop_once_the_job_runs, daemon=True).start()
        with pytest.raises(_Stopped):
            run_stage_command([sys.executable, "-c", sweep], "training")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    job = int(pid_file.read_text())
    deadline = time.monotonic() + 20
    while not _process_is_gone(job) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _process_is_gone(job)


# ---------------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_micro_study_makes_the_table_and_resumes_without_retraining(tmp_path):
    arguments = ["study=ablation_fama", "scale=smoke", "variants=[hard,none]", "seeds=[0,1]", "results=micro_study"]
    _study(tmp_path, *arguments)  # the default launcher: submitit subprocesses
    out = tmp_path / "study" / "ablation_fama_smoke"
    jobs = ["hard_seed0", "hard_seed1", "none_seed0", "none_seed1"]
    assert sorted(p.name for p in (out / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")) == jobs
    document = json.loads((tmp_path / "micro_study.json").read_text())
    assert document["command"].startswith("python scripts/study.py study=ablation_fama")
    for variant in ("hard", "none"):
        per_seed = [json.loads((out / "eval" / f"{variant}_seed{s}" / "summary.json").read_text()) for s in (0, 1)]
        for metric in ("psnr", "ssim", "psnr_in_focus", "controllability"):
            values = [summary["methods"]["model"].get(metric, {}).get("mean") for summary in per_seed]
            assert None not in values or metric == "controllability", metric  # (a measure may be undefined)
            stats = document["figures"]["variants"][variant]["metrics"][metric]
            assert stats["values"] == values
            if None not in values:
                assert stats["mean"] == pytest.approx(statistics.fmean(values))
                assert stats["std"] == pytest.approx(statistics.stdev(values))
    assert "±" in (out / "table.md").read_text() and (out / "table.csv").is_file()
    assert (out / "table.png").stat().st_size > 10_000 and (tmp_path / "figure.png").is_file()
    manifest = json.loads((out / "eval" / "none_seed1" / "manifest.json").read_text())
    assert manifest["predictions"]["checkpoint"]["path"] == str(out / "runs" / "none_seed1" / "final")

    # Interrupt: none_seed1 died after its step-2 checkpoint (no final model, no step-3 checkpoint), and the
    # evaluation of hard_seed0 never wrote its scores.
    finals = {job: (out / "runs" / job / "final" / "model.safetensors").stat().st_mtime_ns for job in jobs}
    summaries = {job: (out / "eval" / job / "summary.json").stat().st_mtime_ns for job in jobs}
    interrupted = out / "runs" / "none_seed1"
    uid = (interrupted / RUN_UID_FILE).read_text()
    shutil.rmtree(interrupted / "final")
    shutil.rmtree(interrupted / "checkpoints" / "step_000003")
    (out / "eval" / "hard_seed0" / "summary.json").unlink()
    done = _study(tmp_path, *arguments, "launcher=basic")
    assert "1 of 4 training runs to do (none_seed1 resumes)" in done.stderr + done.stdout
    assert [p.stem for p in (out / "sweep" / "train" / "study_run").glob("*.yaml")] == ["none_seed1"]
    for job in jobs:  # the three finished runs were not trained again
        now = (out / "runs" / job / "final" / "model.safetensors").stat().st_mtime_ns
        assert (now == finals[job]) is (job != "none_seed1"), job
    assert (interrupted / RUN_UID_FILE).read_text() == uid  # resumed (a fresh run would get a new id) ...
    assert "resumed from" in (interrupted / "train.log").read_text() and "step_000002" in done.stdout + done.stderr
    assert [r["step"] for r in read_metrics(interrupted) if "phase" in r] == [1, 2, 3]  # ... and logged step 3 once
    # The resumed run ends with the very weights the uninterrupted one had (resume is exact), so its scores are
    # still those of its checkpoint: only the missing scores are computed.
    evaluated = {job for job in jobs if (out / "eval" / job / "summary.json").stat().st_mtime_ns != summaries[job]}
    assert evaluated == {"hard_seed0"}
    assert checkpoint_record(interrupted / "final")["sha256"] == manifest["predictions"]["checkpoint"]["sha256"]
    # The study's cost is that of both invocations, each stage counted where it did work.
    records = [json.loads(line) for line in (out / "timing.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["jobs"]) for r in records] == [
        ("train", jobs), ("evaluate", jobs), ("train", ["none_seed1"]), ("evaluate", ["hard_seed0"])
    ]  # fmt: skip
    time = json.loads((tmp_path / "micro_study.json").read_text())["figures"]["time"]
    assert time["stages"]["train"]["invocations"] == 2 and time["stages"]["prepare"]["invocations"] == 0
    assert time["total_seconds"] == pytest.approx(sum(r["seconds"] for r in records))


def test_scores_of_another_checkpoint_are_redone_with_overwrite(tmp_path, tiny_model):
    overrides = ["study=ablation_fama", "scale=smoke", "variants=[hard]", "seeds=[0]", f"paths.output_dir={tmp_path}"]
    study = _config(*overrides)
    (job,) = study.jobs
    assert evaluation_state(job, study.metrics) == "todo"
    tiny_model.save_pretrained(job.final_model)
    job.eval_dir.mkdir(parents=True)
    summary = {"methods": {"model": {"psnr": {"mean": 20.0}, "ssim": {"mean": 0.5}}}}
    (job.eval_dir / "summary.json").write_text(json.dumps(summary))
    record = {"predictions": {"checkpoint": checkpoint_record(job.final_model)}}
    (job.eval_dir / "manifest.json").write_text(json.dumps(record))
    assert evaluation_state(job, study.metrics) == "done"  # psnr_in_focus / controllability are measures
    assert evaluation_state(job, [*study.metrics, "lpips"]) == "todo"  # a metric the table needs is missing
    record["predictions"]["checkpoint"]["sha256"] = "0" * 64
    (job.eval_dir / "manifest.json").write_text(json.dumps(record))
    assert evaluation_state(job, study.metrics) == "stale"
    evaluation_sweep_command(study, [job], "basic", [])
    option = yaml.safe_load((study.out_dir / "sweep" / "evaluate" / "study_eval" / "hard_seed0.yaml").read_text())
    assert option["overwrite"] is True


@pytest.mark.slow
def test_strategy_study_command_runs_every_variant(tmp_path):
    _study(tmp_path, "study=ablation_strategy", "scale=smoke", "seeds=[0]", "launcher=basic", "results=null")
    out = tmp_path / "study" / "ablation_strategy_smoke"
    phases = {
        variant: [r["phase"] for r in read_metrics(out / "runs" / f"{variant}_seed0") if "phase" in r]
        for variant in ("alternating", "joint", "sr_first")
    }
    # 3 steps each after 1 of SR pre-training (the caller's micro setting beats the joint variant's 0): alternating
    # bokeh:SR 2:1 (the smoke's ratio), joint in one phase, SR first then bokeh only.
    assert phases == {"alternating": ["sr_pretrain", "bokeh", "bokeh"], "joint": ["sr_pretrain", "joint", "joint"],
                      "sr_first": ["sr_pretrain", "bokeh", "bokeh"]}  # fmt: skip
    schedules = {v: yaml.safe_load((out / "runs" / f"{v}_seed0" / ".hydra" / "config.yaml").read_text())["trainer"]
                 ["schedule"]["cycle"] for v in phases}  # fmt: skip
    assert schedules == {"alternating": ["bokeh", "sr"], "joint": ["joint"], "sr_first": ["bokeh"]}
    assert "| sr_first |" in (out / "table.md").read_text()


@pytest.mark.slow
def test_depth_study_command_prepares_the_depth_models_and_runs_every_source(tmp_path):
    # The smoke scale's depth distillation, 2 steps at 28 px (${out_dir} is resolved by the study itself).
    prepare = ["scripts/train_depth.py", "experiment=depth_smoke", "hydra.run.dir=${out_dir}/depth", "distill.steps=2",
               "distill.eval_every=2", "distill.checkpoint_every=2", "distill.batch_size=2", "data.train.crop_size=28",
               "data.eval.crop_size=28", "data.eval.length=2"]  # fmt: skip
    _study(tmp_path, "study=ablation_depth", "scale=smoke", "seeds=[0]", "launcher=basic", "results=null",
           _as_list("study.scales.smoke.prepare.0.command", prepare))  # fmt: skip
    out = (tmp_path / "study" / "ablation_depth_smoke").resolve()
    assert (out / "depth" / "teacher" / "model.safetensors").is_file()
    roles = {}
    for variant in ("student_lq", "teacher_lq", "teacher_hq", "gt"):
        config = yaml.safe_load((out / "runs" / f"{variant}_seed0" / ".hydra" / "config.yaml").read_text())
        assert config["trainer"]["defocus_depth"]["source"] == variant
        manifest = json.loads((out / "eval" / f"{variant}_seed0" / "manifest.json").read_text())
        assert manifest["predictions"]["protocol"]["disparity"] == variant
        depth = manifest["predictions"]["depth_model"]
        roles[variant] = depth and (depth["role"], Path(depth["weights"]).resolve())
    assert roles == {
        "student_lq": ("depth_model", out / "depth" / "student"),
        "teacher_lq": ("depth_teacher", out / "depth" / "teacher"),
        "teacher_hq": ("depth_teacher", out / "depth" / "teacher"),
        "gt": None,  # the benchmark's own maps: no depth model
    }


def test_the_studys_paths_reach_every_run_and_missing_weights_stop_it_before_any_job(tmp_path):
    from magicbokeh.errors import MissingWeightsError

    study = _config("study=ablation_fama", f"paths.output_dir={tmp_path}", "paths.sd21=/nowhere/sd21")
    assert "paths.sd21=/nowhere/sd21" in study.train_overrides and "paths.sd21=/nowhere/sd21" in study.eval_overrides
    assert not any(override.startswith("paths.output_dir=") for override in study.train_overrides)
    with pytest.raises(MissingWeightsError, match="'/nowhere/sd21' does not exist.*paths.sd21"):
        check_training_configs(study)
    assert not (study.out_dir / "sweep").exists()  # no job was written, let alone started
