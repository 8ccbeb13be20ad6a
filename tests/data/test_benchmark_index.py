import json

import pytest

from magicbokeh.data.benchmark_index import BenchmarkSample, load_benchmark_index, write_benchmark_index
from magicbokeh.errors import DatasetError


def test_round_trip_and_missing_file(tmp_path):
    (tmp_path / "lq").mkdir()
    (tmp_path / "lq" / "a.png").write_bytes(b"x")
    sample = BenchmarkSample(
        id="a", task="bokeh", lq=tmp_path / "lq" / "a.png", focus_disparity=0.4, K=16.0, extra={"scene": 3}
    )
    write_benchmark_index(tmp_path, "toy", [sample], {"seed": 1})
    header, samples = load_benchmark_index(tmp_path)
    assert header["name"] == "toy" and samples == [sample]
    raw = json.loads((tmp_path / "index.json").read_text())
    assert raw["samples"][0]["lq"] == "lq/a.png"
    (tmp_path / "lq" / "a.png").unlink()
    with pytest.raises(DatasetError, match="missing file"):
        load_benchmark_index(tmp_path)


def test_not_a_benchmark_folder(tmp_path):
    with pytest.raises(DatasetError, match="index.json"):
        load_benchmark_index(tmp_path)
