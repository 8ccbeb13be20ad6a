"""The renderer benchmark runs end to end at toy sizes and writes its tables (numbers are never asserted)."""

from __future__ import annotations

from magicbokeh.data import renderer_benchmark
from magicbokeh.utils.results import Table, read_results


def test_renderer_benchmark_writes_its_tables(tmp_path, capsys):
    argv = ["--height", "48", "--width", "64", "--blur-px", "4", "--crop", "12", "--synthetic-scenes", "1",
            "--grid", str(tmp_path / "grid.png"), "--results", "renderer_test"]  # fmt: skip
    assert renderer_benchmark.main(argv) == 0
    assert "brute-force scatter on a 12×12 crop" in capsys.readouterr().out
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "optics_synthetic.png").is_file()
    document = read_results("renderer_test")  # the tests' results folder (conftest.py)
    assert set(document["tables"]) == {"full_frame", "reference", "synthetic"}
    full = Table.from_json(document["tables"]["full_frame"])
    assert {row[0] for row in full.rows} == {"layered", "scatter"}
    # Only one-thread renders are compared with the one-thread brute force.
    assert all((row[5] is None) == (row[1] != 1) for row in full.rows)
    assert [row[0] for row in Table.from_json(document["tables"]["synthetic"]).rows] == [256, 512]
    assert document["figures"]["settings"]["height"] == 48
