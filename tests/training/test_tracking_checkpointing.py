"""Tracking (metrics.jsonl as an accelerate tracker, run ids) and checkpoints (accelerate save_state/load_state in
atomic folders, keep-last-K, trainable-only weights, plain-data named states)."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator

from magicbokeh.errors import ConfigError
from magicbokeh.training.checkpointing import Checkpoints, TrainingProgress, WeightsFile
from magicbokeh.training.tracking import JsonlTracker, read_metrics, run_uid, tracker_settings


def _logging_accelerator(run_dir, resume_step=None) -> Accelerator:
    accelerator = Accelerator(cpu=True, log_with=[JsonlTracker(run_dir, resume_step)])
    accelerator.init_trackers("test")
    return accelerator


def test_jsonl_tracker_writes_one_flushed_line_per_log_call(tmp_path):
    accelerator = _logging_accelerator(tmp_path)
    accelerator.log({"loss": torch.tensor(0.5), "lr": 1e-4, "bad": float("nan"), "phase": "sr"}, step=3)
    # On disk before the tracker is closed: a killed run keeps what it logged.
    assert read_metrics(tmp_path) == [{"step": 3, "loss": 0.5, "lr": 1e-4, "bad": None, "phase": "sr"}]
    accelerator.log({"loss": 0.25}, step=4)
    accelerator.end_training()
    assert [r["step"] for r in read_metrics(tmp_path)] == [3, 4]


def test_resume_drops_records_after_the_checkpoint_step_and_a_new_run_starts_afresh(tmp_path):
    accelerator = _logging_accelerator(tmp_path)
    for step in range(1, 7):
        accelerator.log({"loss": float(step)}, step=step)
    accelerator.end_training()
    # Resumed from the step-4 checkpoint: steps 5-6 of the interrupted run are dropped, then logging continues.
    accelerator = _logging_accelerator(tmp_path, resume_step=4)
    accelerator.log({"loss": 50.0}, step=5)
    accelerator.end_training()
    records = [(r["step"], r["loss"]) for r in read_metrics(tmp_path)]
    assert records == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)]
    # A new run in the same folder does not continue the old file.
    accelerator = _logging_accelerator(tmp_path)
    accelerator.log({"loss": 9.0}, step=1)
    accelerator.end_training()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 9.0}]


def test_run_uid_is_new_per_run_and_kept_by_a_resume(tmp_path):
    first = run_uid(tmp_path, resuming=False)
    assert run_uid(tmp_path, resuming=True) == first
    second = run_uid(tmp_path, resuming=False)  # a new run in the same folder: a new id
    assert second != first and run_uid(tmp_path, resuming=True) == second
    assert run_uid(tmp_path / "elsewhere", resuming=True) not in (first, second)  # resumed from another folder


def test_tracker_settings(tmp_path):
    log_with, kwargs = tracker_settings({"name": "wandb", "project": "p", "mode": "offline"}, tmp_path, "abc", None)
    assert isinstance(log_with[0], JsonlTracker) and log_with[1] == "wandb"
    assert kwargs["wandb"]["id"] == "abc" and kwargs["wandb"]["mode"] == "offline"
    assert kwargs["wandb"]["dir"] == str(tmp_path) and kwargs["wandb"]["resume"] == "allow"
    log_with, kwargs = tracker_settings({"name": "none"}, tmp_path, "abc", None)
    assert len(log_with) == 1 and kwargs == {}
    with pytest.raises(ConfigError, match="unknown logger"):
        tracker_settings({"name": "tensorboard"}, tmp_path, "abc", None)
    with pytest.raises(ConfigError, match="logger.mode"):
        tracker_settings({"name": "wandb", "mode": "sometimes"}, tmp_path, "abc", None)


# ------------------------------------------------------------------------------------------------------ checkpoints
class _Counter:
    """A named state that is plain data."""

    def __init__(self) -> None:
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = int(state["value"])


def _setup(checkpoint_dir, keep_last=2, trainable_only=True):
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    layer = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    optimizer = torch.optim.AdamW(layer[1].parameters(), lr=1e-3)
    layer, optimizer = accelerator.prepare(layer, optimizer)

    def tensors():  # only the "trainable" second layer, as checkpoint_state_dict does for an SD2.1 model
        state = layer.state_dict()
        return {k: v for k, v in state.items() if k.startswith("1.")} if trainable_only else state

    progress, counter = TrainingProgress(), _Counter()
    checkpoints = Checkpoints(
        accelerator, checkpoint_dir, keep_last,
        weights=[WeightsFile("model", layer, tensors, lambda t: layer.load_state_dict(t, strict=not trainable_only))],
        states={"progress": progress, "counter": counter}, optimizers=["only"],
    )  # fmt: skip
    return accelerator, layer, optimizer, progress, counter, checkpoints


def _train_a_step(layer, optimizer):
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_checkpoint_round_trip_restores_weights_optimizer_states_and_rng(tmp_path):
    _, layer, optimizer, progress, counter, checkpoints = _setup(tmp_path)
    _train_a_step(layer, optimizer)
    progress.step, counter.value = 7, 42
    path = checkpoints.save(7)
    assert path.name == "step_000007" and checkpoints.latest() == path
    from safetensors.torch import load_file

    assert set(load_file(path / "model.safetensors")) == {"1.weight", "1.bias"}  # trainable tensors only
    expected_draw = torch.rand(3)  # what the global RNG gives right after the checkpoint

    _, layer2, optimizer2, progress2, counter2, checkpoints2 = _setup(tmp_path)
    torch.manual_seed(99)
    assert checkpoints2.load(path) == 7
    assert torch.equal(torch.rand(3), expected_draw)
    assert progress2.step == 7 and counter2.value == 42
    assert torch.equal(layer2[1].weight, layer[1].weight)
    state, state2 = optimizer.state_dict()["state"], optimizer2.state_dict()["state"]
    assert all(torch.equal(state[k]["exp_avg"], state2[k]["exp_avg"]) for k in state)


def test_checkpoints_keep_last_k_and_ignore_partial_folders(tmp_path):
    *_, progress, _, checkpoints = _setup(tmp_path)
    for step in (1, 2, 3):
        progress.step = step
        checkpoints.save(step)
    # A save killed half-way leaves only the hidden staging folder (or a folder without contents.json).
    (tmp_path / ".step_000009.partial").mkdir()
    (tmp_path / "step_000010").mkdir()
    assert [p.name for p in checkpoints.checkpoints()] == ["step_000002", "step_000003"]
    assert checkpoints.latest().name == "step_000003"
    progress.step = 30
    checkpoints.save(3)  # the same step again replaces it cleanly
    assert json.loads((tmp_path / "step_000003" / "contents.json").read_text())["step"] == 3
    assert not any(p.name.startswith(".step_000003") for p in tmp_path.iterdir())


def test_load_refuses_non_checkpoints_mismatches_and_pickled_objects(tmp_path):
    checkpoints = _setup(tmp_path / "a")[5]
    with pytest.raises(ConfigError, match="not a training checkpoint"):
        checkpoints.load(tmp_path)
    path = checkpoints.save(1)
    contents = json.loads((path / "contents.json").read_text())
    (path / "contents.json").write_text(json.dumps({**contents, "states": ["progress"]}))
    with pytest.raises(ConfigError, match="holds states"):
        checkpoints.load(path)
    (path / "contents.json").write_text(json.dumps(contents))
    # accelerate reads named states with weights_only=False: an object that is not plain data is refused first.
    torch.save({"value": _Counter()}, path / "custom_checkpoint_1.pkl")  # an object, not plain data
    with pytest.raises(ConfigError, match="more than plain data"):
        checkpoints.load(path)


@pytest.mark.slow
def test_trackers_are_finished_when_training_raises(tmp_path, monkeypatch):
    """An exception mid-run still closes metrics.jsonl and finishes the (offline) wandb run."""
    import wandb

    from magicbokeh.training.train import train
    from magicbokeh.training.trainer import Trainer
    from magicbokeh.utils.config import compose_config
    from tests.training.test_train_smoke import _toy_overrides

    finished = []
    original_finish = JsonlTracker.finish
    monkeypatch.setattr(JsonlTracker, "finish", lambda self: finished.append(self.path) or original_finish(self))

    def crash(self):
        self.accelerator.log({"loss": 1.0}, step=1)
        raise RuntimeError("crash mid-run")

    monkeypatch.setattr(Trainer, "fit", crash)
    overrides = [o for o in _toy_overrides(tmp_path, "crash") if not o.startswith("logger")]
    overrides += ["data.val_sr.length=2", "logger=wandb", "logger.mode=offline"]
    cfg = compose_config("train", ["experiment=smoke", *overrides])
    with pytest.raises(RuntimeError, match="crash mid-run"):
        train(cfg)
    run_dir = tmp_path / "smoke" / "crash"
    assert finished == [run_dir / "metrics.jsonl"] and read_metrics(run_dir)[-1] == {"step": 1, "loss": 1.0}
    assert wandb.run is None  # finished, not left running
    uid = (run_dir / "run_uid").read_text().strip()
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{uid}"))) == 1
