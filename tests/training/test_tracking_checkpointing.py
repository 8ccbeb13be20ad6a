"""Tracker (metrics.jsonl) and CheckpointManager (atomic folders, keep-last-K, round trip, RNG capture)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from magicbokeh.errors import ConfigError
from magicbokeh.training.checkpointing import CheckpointManager, capture_rng_state, restore_rng_state
from magicbokeh.training.tracking import Tracker, read_metrics


def test_tracker_appends_jsonl_records(tmp_path):
    with Tracker(tmp_path, {"name": "none"}, {"seed": 1}, is_main_process=True) as tracker:
        tracker.log({"loss": torch.tensor(0.5), "lr": 1e-4, "bad": float("nan")}, step=3)
        tracker.log({"loss": 0.25}, step=4)
    records = read_metrics(tmp_path)
    assert records == [{"step": 3, "loss": 0.5, "lr": 1e-4, "bad": None}, {"step": 4, "loss": 0.25}]
    # A resumed run appends to the same file.
    with Tracker(tmp_path, {"name": "none"}, {}, is_main_process=True) as tracker:
        tracker.log({"loss": 0.1}, step=5)
    assert [r["step"] for r in read_metrics(tmp_path)] == [3, 4, 5]


def test_tracker_on_other_ranks_writes_nothing(tmp_path):
    tracker = Tracker(tmp_path / "run", {"name": "none"}, {}, is_main_process=False)
    tracker.log({"loss": 1.0}, step=0)
    tracker.close()
    assert not (tmp_path / "run").exists()


def test_tracker_rejects_unknown_logger(tmp_path):
    with pytest.raises(ConfigError, match="unknown logger"):
        Tracker(tmp_path, {"name": "tensorboard"}, {}, is_main_process=True)


def _fake_training_state():
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))
    layer(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return layer, optimizer, scheduler


def test_checkpoint_round_trip(tmp_path):
    layer, optimizer, scheduler = _fake_training_state()
    manager = CheckpointManager(tmp_path, keep_last=2)
    path = manager.save(
        7, dict(layer.state_dict()), {"sr": optimizer}, {"sr": scheduler}, {"phase": "sr", "positions": {"sr": 12}}
    )
    assert path.name == "step_000007" and manager.latest() == path
    model_state, optimizer_states, scheduler_states, trainer_state = manager.load(path)
    assert torch.equal(model_state["weight"], layer.weight.detach())
    assert trainer_state == {"step": 7, "phase": "sr", "positions": {"sr": 12}}
    restored = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    restored.load_state_dict(optimizer_states["sr"])
    assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert scheduler_states["sr"]["last_epoch"] == 1


def test_checkpoint_keeps_last_k_and_ignores_partial_folders(tmp_path):
    layer, optimizer, scheduler = _fake_training_state()
    manager = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        manager.save(step, dict(layer.state_dict()), {"a": optimizer}, {"a": scheduler}, {})
    # A crashed save leaves only a hidden temp folder (or a folder without trainer_state.json): never "latest".
    (tmp_path / ".step_000009.abc").mkdir()
    (tmp_path / "step_000010").mkdir()
    assert [p.name for p in manager.checkpoints()] == ["step_000002", "step_000003"]
    assert manager.latest().name == "step_000003"
    # Saving the same step again replaces it cleanly.
    manager.save(3, dict(layer.state_dict()), {"a": optimizer}, {"a": scheduler}, {"again": True})
    assert json.loads((tmp_path / "step_000003" / "trainer_state.json").read_text())["again"] is True


def test_checkpoint_load_of_non_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(ConfigError, match="not a training checkpoint"):
        CheckpointManager(tmp_path, keep_last=1).load(tmp_path)


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(capture_rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    restore_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))  # noqa: NPY002
    assert expected[0] == again[0] and expected[1] == again[1] and torch.equal(expected[2], again[2])
