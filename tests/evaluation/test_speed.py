"""Speed benchmark plumbing: FLOP counting, records and the table (no timing asserts)."""

from __future__ import annotations

import json

import pytest
import torch

from magicbokeh.errors import ParameterError
from magicbokeh.evaluation import speed
from magicbokeh.utils.results import Table, read_results


def test_measure_counts_matmul_flops_and_reports_positive_latency():
    a, b = torch.rand(8, 16), torch.rand(16, 4)
    stats = speed.measure(lambda: a @ b, torch.device("cpu"), repeats=2, warmup=1)
    assert stats["flops"] == 2 * 8 * 16 * 4  # one multiply-add = 2 FLOPs
    assert stats["latency_s"] > 0 and stats["images_per_s"] == pytest.approx(1 / stats["latency_s"])
    assert stats["peak_memory_gib"] > 0


def test_table_gives_ratios_against_the_unified_model():
    records = [
        {"arch": "tiny", "method": "model", "latency_s": 0.5, "images_per_s": 2.0, "peak_memory_gib": 1.0,
         "flops": 1e9, "parameters": 2e6},
        {"arch": "tiny", "method": "model_two_pass", "latency_s": 1.0, "images_per_s": 1.0, "peak_memory_gib": 1.0,
         "flops": 2e9, "parameters": 2e6},
    ]  # fmt: skip
    text = speed.table(records, 64, torch.device("cpu"))
    assert "| tiny | two-pass: SR pass → bokeh pass | 1.0000 | 1 | 2.00 | 2.00 | 2 | 2.00 |" in text


@pytest.mark.slow
def test_main_times_the_tiny_model_end_to_end(tmp_path, capsys):
    out = tmp_path / "speed.json"
    argv = ["--arch", "tiny", "--size", "32", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--json", str(out),
            "--results", "speed_test"]  # fmt: skip
    assert speed.main(argv) == 0
    records = json.loads(out.read_text())
    document = read_results("speed_test")  # the tests' results folder (conftest.py)
    assert document["figures"]["records"] == records and document["figures"]["settings"]["size"] == 32
    rows = Table.from_json(document["tables"]["latency"]).rows
    assert [row[1] for row in rows] == [speed.LABELS[r["method"]] for r in records]
    assert {r["method"] for r in records} == set(speed.SPEED_METHODS)
    by_method = {r["method"]: r for r in records}
    # Two network passes cost twice the FLOPs of one; the renderer adds no network FLOPs.
    assert by_method["model_two_pass"]["flops"] == 2 * by_method["model"]["flops"] > 0
    assert by_method["bicubic_renderer"]["parameters"] == 0
    assert "unified (1 pass)" in capsys.readouterr().out


def test_bad_arguments_are_user_errors():
    with pytest.raises(ParameterError):
        speed.main(["--repeats", "-1"])
