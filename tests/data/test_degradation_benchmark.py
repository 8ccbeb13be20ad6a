"""The throughput benchmark runs end to end (tiny sizes; the numbers themselves are never asserted)."""

from __future__ import annotations

import pytest
import torch

from magicbokeh.data import benchmark
from magicbokeh.errors import ParameterError
from magicbokeh.utils.results import Table, read_results


def test_benchmark_prints_every_row_and_writes_its_results_file(capsys):
    argv = ["--size", "32", "--samples", "2", "--presets", "realesrgan", "none", "--results", "degradation_test"]
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    for row in ("bicubic x4", "realesrgan", "none", "sr dataset", "slowest: realesrgan"):
        assert row in out
    document = read_results("degradation_test")  # the tests' results folder (conftest.py)
    table = Table.from_json(document["tables"]["throughput"])
    assert [row[0] for row in table.rows] == ["bicubic x4", "realesrgan", "none", "sr dataset"]
    rates = document["figures"]["samples_per_s_per_core"]
    assert table.rows[1][1] == rates["realesrgan"] and table.rows[0][3] == 1.0  # the baseline against itself
    assert document["figures"]["size"] == 32 and document["command"]


def test_results_none_writes_nothing(results_elsewhere):
    from pathlib import Path

    before = set(Path(results_elsewhere).iterdir())
    assert benchmark.main(["--size", "32", "--samples", "1", "--presets", "none", "--results", "none"]) == 0
    assert set(Path(results_elsewhere).iterdir()) == before


def test_device_option_is_checked():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ParameterError, match="no CUDA device"):
        benchmark.main(["--size", "32", "--samples", "1", "--device", "cuda", "--results", "none"])


@pytest.mark.gpu
def test_benchmark_degrades_on_cuda(capsys):
    argv = ["--size", "64", "--samples", "2", "--presets", "realesrgan", "--device", "cuda", "--results", "none"]
    assert benchmark.main(argv) == 0
    out = capsys.readouterr().out
    assert "on cuda" in out and "realesrgan" in out and "sr dataset" not in out
