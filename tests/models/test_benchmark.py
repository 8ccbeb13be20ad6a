"""The model benchmark runs end to end at toy sizes, writes its results file, and its memory probe sees an
allocation (no timing asserts)."""

from __future__ import annotations

import json

import pytest
import torch

from magicbokeh.errors import ParameterError
from magicbokeh.models import benchmark
from magicbokeh.models.attention import ATTENTION_BACKENDS
from magicbokeh.utils.results import RESULTS_DIR_ENV


def test_attention_benchmark_compares_every_backend_with_the_dense_reference(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    assert benchmark.main(["--tokens", "64", "16", "--repeats", "1", "--skip-full", "--results", "model_test"]) == 0
    output = capsys.readouterr().out
    for text in ("64 tokens", "16 tokens", "dense −∞ reference", "speed-up", "mem ratio", "default backend (gather)"):
        assert text in output
    assert all(f"FAMA {backend}" in output for backend in ATTENTION_BACKENDS)
    document = json.loads((tmp_path / "model_test.json").read_text())
    figures = document["figures"]
    assert figures["picked_backend"] in ATTENTION_BACKENDS
    assert figures["picked_backend"] == figures["attention"]["64"]["fastest_backend"]  # the largest size decides
    for size in ("64", "16"):
        rows = figures["attention"][size]["rows"]
        assert set(rows) == {"dense", "unmasked", "levels4", "soft", *ATTENTION_BACKENDS}
        # Every backend computes the same attention as the dense formula (float32 here), and the ablation masks
        # (levels:4 through the default backend, soft) as theirs.
        assert all(rows[name]["max_abs_error"] < 1e-5 for name in (*ATTENTION_BACKENDS, "levels4", "soft"))
    check = figures["default_backend_vs_dense"]
    assert check["backend"] == "gather" and check["tokens"] == 64
    assert len(document["tables"]["attention"]["rows"]) == 2 * (len(ATTENTION_BACKENDS) + 4)
    assert "FAMA soft (dense bias)" in output and "FAMA levels:4 (gather)" in output


def test_benchmark_without_results_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    args = ["--tokens", "16", "--backends", "gather", "--repeats", "1", "--skip-full", "--results", "none"]
    assert benchmark.main(args) == 0
    assert not list(tmp_path.iterdir())
    assert "results:" not in capsys.readouterr().out


def test_a_missing_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ParameterError, match="no CUDA device"):
        benchmark.main(["--tokens", "16", "--skip-full", "--device", "cuda"])
    with pytest.raises(ParameterError, match="not a torch device"):
        benchmark.main(["--tokens", "16", "--skip-full", "--device", "gpu0"])


def test_peak_memory_probe_sees_a_64_mib_allocation():
    peak = benchmark.peak_memory_mib(lambda: torch.ones(16 * 2**20), torch.device("cpu"))
    assert peak is None or peak >= 48
