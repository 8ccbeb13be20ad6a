"""The throughput benchmark runs end to end (tiny sizes; the numbers themselves are never asserted)."""

from __future__ import annotations

from magicbokeh.data import benchmark


def test_benchmark_prints_every_row(capsys):
    assert benchmark.main(["--size", "32", "--samples", "2", "--presets", "realesrgan", "none"]) == 0
    out = capsys.readouterr().out
    for row in ("bicubic x4", "realesrgan", "none", "sr dataset", "slowest: realesrgan"):
        assert row in out
