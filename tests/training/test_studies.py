"""The studies behind the smoke recipe's claims (scripts/study_*.py) run end to end at toy sizes and write their
results files; the figures themselves are never asserted."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from magicbokeh.utils.results import Table, read_results

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# The smoke config shrunk to toy sizes: 16 px crops, tiny held-out sets.
TOY_DATA = ["data.crop_size=16", "data.val_bokeh.length=2", "data.val_sr.length=2"]


def _script(name: str):
    """Load ``scripts/<name>.py`` as a module (scripts are entry points, not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_capacity_cnn_starts_as_the_identity():
    model = _script("study_capacity").ResidualCNN(convs=4, channels=8)
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(model(images), images)
    assert sum(isinstance(layer, torch.nn.Conv2d) for layer in model.body) == 4


def test_capacity_study_writes_one_row_per_scale_and_set():
    argv = ["--scales", "2", "4", "--steps", "2", "--eval-every", "1", "--channels", "4", "--batch-size", "2",
            *(f"--override={override}" for override in TOY_DATA), "--results", "capacity_test"]  # fmt: skip
    assert _script("study_capacity").main(argv) == 0
    document = read_results("capacity_test")  # the tests' results folder (conftest.py)
    rows = Table.from_json(document["tables"]["psnr"]).rows
    assert [(row[0], row[1]) for row in rows] == [(s, name) for s in ("×2", "×4") for name in ("validation", "test")]
    for row in rows:
        assert row[2] == 2 and row[5] == pytest.approx(row[4] - row[3])
    runs = document["figures"]["runs"]
    assert [point["step"] for point in runs[0]["curve"]] == [1, 2]
    # The input scores depend on the scale (the degradation), not on the CNN.
    assert rows[0][3] != rows[2][3]


TOY_TRAINING = [
    *TOY_DATA,
    "data.batch_size=2",
    "trainer.max_steps=3",
    "trainer.schedule.pretrain_steps=1",
    "trainer.val_every=0",
    "trainer.checkpoint_every=0",
    "trainer.validation.batch_size=2",
]


@pytest.mark.slow
def test_smoke_study_trains_both_variants_and_scores_every_set(tmp_path):
    argv = [*(f"--override={override}" for override in TOY_TRAINING), "--larger-length", "3",
            "--keep-runs", str(tmp_path), "--results", "study_smoke_test"]  # fmt: skip
    assert _script("study_smoke").main(argv) == 0
    document = read_results("study_smoke_test")
    training = document["figures"]["training"]
    assert training["SR only"]["overrides"][-1] == "trainer.schedule.pretrain_steps=3"  # every step SR pre-training
    recipe = Table.from_json(document["tables"]["recipe"])
    larger = Table.from_json(document["tables"]["larger_sets"])
    assert [row[:3] for row in recipe.rows] == [[s, t, 2] for s in ("validation", "test") for t in ("bokeh", "sr")]
    assert [row[2] for row in larger.rows] == [3, 3, 3, 3]
    # The study scores the final models the way the run's own final table does: same sets, same numbers.
    for row in recipe.rows:
        final = training["smoke"]["final_tables"][row[0]]
        assert row[3] == pytest.approx(final["upsampled input"][f"{row[1]}/psnr"])
        assert row[4] == pytest.approx(final["trained"][f"{row[1]}/psnr"], abs=1e-5)
        assert row[5] == pytest.approx(final["trained + wavelet colour fix"][f"{row[1]}/psnr"], abs=1e-5)
    assert (tmp_path / "smoke" / "sr_only" / "final" / "config.json").is_file()


@pytest.mark.slow
def test_vsd_study_times_both_variants():
    argv = ["--steps", "1", "--repeats", "1", *(f"--override={o}" for o in [*TOY_DATA, "data.batch_size=2"]),
            "--results", "vsd_test"]  # fmt: skip
    assert _script("study_vsd").main(argv) == 0
    document = read_results("vsd_test")
    rows = Table.from_json(document["tables"]["step_time"]).rows
    assert [row[0] for row in rows] == ["without VSD", "with VSD"] and rows[0][4] == 1.0
    assert document["figures"]["ratio"] == pytest.approx(rows[1][2] / rows[0][2])
