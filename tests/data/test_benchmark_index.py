import json

import pytest

from magicbokeh.data.benchmark_index import (
    BenchmarkSample,
    check_sample_id,
    load_benchmark_index,
    write_benchmark_index,
)
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


def _index_with(tmp_path, **entry):
    (tmp_path / "lq").mkdir(exist_ok=True)
    (tmp_path / "lq" / "a.png").write_bytes(b"x")
    sample = {"id": "a", "task": "bokeh", "lq": "lq/a.png", **entry}
    (tmp_path / "index.json").write_text(json.dumps({"name": "toy", "samples": [sample]}))


@pytest.mark.parametrize(
    "entry",
    [
        {"lq": "../outside.png"},
        {"lq": "lq/../../outside.png"},
        {"target": "..\\outside.png"},
        {"mask": "/etc/passwd"},
        {"disparity": "C:/maps/a.npy"},
    ],
)
def test_paths_that_leave_the_benchmark_folder_are_refused(tmp_path, entry):
    (tmp_path.parent / "outside.png").write_bytes(b"x")  # exists: the refusal is about the path, not the file
    _index_with(tmp_path, **entry)
    with pytest.raises(DatasetError, match="leaves the benchmark folder"):
        load_benchmark_index(tmp_path)


@pytest.mark.parametrize("sample_id", ["../../escape", "a/b", "..", "x\\y", "/abs", ""])
def test_ids_that_are_not_plain_file_names_are_refused(tmp_path, sample_id):
    _index_with(tmp_path, id=sample_id)
    with pytest.raises(DatasetError, match="not a plain file name"):
        load_benchmark_index(tmp_path)
    with pytest.raises(DatasetError, match="not a plain file name"):
        check_sample_id(sample_id)


def test_duplicate_ids_and_missing_focus(tmp_path):
    (tmp_path / "lq").mkdir()
    (tmp_path / "lq" / "a.png").write_bytes(b"x")
    entry = {"id": "a", "task": "bokeh", "lq": "lq/a.png"}
    (tmp_path / "index.json").write_text(json.dumps({"samples": [entry, entry]}))
    with pytest.raises(DatasetError, match="appears twice"):
        load_benchmark_index(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"samples": [{**entry, "focus_disparity": None}]}))
    assert load_benchmark_index(tmp_path)[1][0].focus_disparity is None  # chosen at evaluation time
