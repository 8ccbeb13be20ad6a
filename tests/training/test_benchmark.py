"""The training-step benchmark runs real steps per phase and writes its results file (no timing asserts)."""

from __future__ import annotations

import json

import pytest
import torch

from magicbokeh.errors import ParameterError
from magicbokeh.training import benchmark
from magicbokeh.utils.results import RESULTS_DIR_ENV


@pytest.mark.slow  # two smoke steps per phase (batch 8): ~8 s idle, 30 s on a busy 2-core machine
def test_training_benchmark_steps_each_phase_and_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    args = ["--phases", "sr", "bokeh", "--steps", "1", "--sd21-size", "0"]
    assert benchmark.main([*args, "--results", "training_test"]) == 0
    assert "smoke network  bokeh" in capsys.readouterr().out
    document = json.loads((tmp_path / "training_test.json").read_text())
    rows = document["figures"]["rows"]
    assert [(row["network"], row["phase"]) for row in rows] == [("smoke", "sr"), ("smoke", "bokeh")]
    assert all(row["steps_per_second"] > 0 for row in rows)
    assert document["figures"]["mixed_precision"] == "no"
    assert document["tables"]["steps"]["columns"][-1] == "peak process RSS (GiB)"


def test_a_step_really_updates_the_phase_parameters():
    from hydra.utils import instantiate

    from magicbokeh.utils.config import compose_config

    torch.manual_seed(0)
    model = instantiate(compose_config("train", ["experiment=smoke"]).model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # fp16 autocast with its GradScaler; two steps, since the zero-initialised ControlNet outputs pass no gradient to
    # the layers before them on the first one.
    benchmark.seconds_per_step(model, "bokeh", 32, 1, 2, 0, torch.device("cpu"), "fp16")
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed == set(model.phase_parameter_names("bokeh"))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ParameterError, match="--steps"):
        benchmark.main(["--steps", "0", "--sd21-size", "0"])
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="no CUDA device"):
            benchmark.main(["--device", "cuda", "--sd21-size", "0"])
