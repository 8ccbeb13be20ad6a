"""The model benchmark runs end to end at toy sizes and its memory probe sees an allocation (no timing asserts)."""

from __future__ import annotations

import torch

from magicbokeh.models import benchmark


def test_attention_benchmark_prints_ratios_against_the_dense_reference(capsys):
    assert benchmark.main(["--tokens", "64", "16", "--repeats", "1", "--skip-full"]) == 0
    output = capsys.readouterr().out
    for text in ("64 tokens", "16 tokens", "dense −∞ reference", "FAMA (region partition)", "speed-up", "mem ratio"):
        assert text in output


def test_peak_memory_probe_sees_a_64_mib_allocation():
    peak = benchmark.peak_memory_mib(lambda: torch.ones(16 * 2**20), torch.device("cpu"))
    assert peak is None or peak >= 48
