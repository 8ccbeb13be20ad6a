"""The throughput benchmark runs end to end (tiny sizes; the numbers themselves are never asserted)."""

from __future__ import annotations

import pytest
import torch

from magicbokeh.data import benchmark
from magicbokeh.errors import ParameterError


def test_benchmark_prints_every_row(capsys):
    assert benchmark.main(["--size", "32", "--samples", "2", "--presets", "realesrgan", "none"]) == 0
    out = capsys.readouterr().out
    for row in ("bicubic x4", "realesrgan", "none", "sr dataset", "slowest: realesrgan"):
        assert row in out


def test_device_option_is_checked():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ParameterError, match="no CUDA device"):
        benchmark.main(["--size", "32", "--samples", "1", "--device", "cuda"])


@pytest.mark.gpu
def test_benchmark_degrades_on_cuda(capsys):
    assert benchmark.main(["--size", "64", "--samples", "2", "--presets", "realesrgan", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "on cuda" in out and "realesrgan" in out and "sr dataset" not in out
