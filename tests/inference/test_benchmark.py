"""The inference benchmark's measurements: seam error of real tiles, and bounded memory at 8000×6000."""

from __future__ import annotations

import math

import pytest

from magicbokeh.inference.benchmark import main, measure, seam_error


def test_seam_error_of_a_pointwise_network_is_zero():
    errors = seam_error(tile=32, stride=16, network="pointwise")
    assert errors["horizontal_max"] == 0.0


@pytest.mark.slow
def test_seam_error_of_the_tiny_network_is_reported(capsys):
    """Two overlapping tiles of the real (tiny, random) architecture disagree: that is what the ramps blend away."""
    errors = seam_error(tile=64, stride=32)
    print(f"tiny network seam error (64/32): {errors}")
    assert all(math.isfinite(v) for v in errors.values())
    assert 0 < errors["horizontal_mean"] <= errors["horizontal_max"] <= 1


@pytest.mark.slow
def test_8000x6000_photo_through_the_cli_path_in_bounded_memory():
    """Read a 48 MP PNG, render (tiles 512/256), write: peak extra memory is a few image-sized buffers.

    The per-pixel stand-in network keeps this feasible on a CPU (the tiny network would need ~700 tile passes);
    device memory is bounded by the tile by construction (tests/inference/test_tiling.py checks tile shapes).
    """
    result = measure((8000, 6000), io=True, timeout_s=1800)
    print(f"8000x6000 via render_inputs: {result}")
    assert result["output_exists"]
    # A float32 RGB copy of the output is 549 MiB; the run holds the input, the output accumulator, the
    # disparity/defocus/weight planes and the decode/encode buffers of data.io: a constant number of them (≈ 4-5
    # measured), whatever the tile count. An untiled tiny network would need hundreds of them in activations.
    assert result["extra_images"] < 6


def test_benchmark_cli_rejects_bad_sizes():
    from magicbokeh.errors import ParameterError

    with pytest.raises(ParameterError, match="WIDTHxHEIGHT"):
        main(["--sizes", "800by600"])


@pytest.mark.slow  # two child processes
def test_small_image_benchmark_times_both_paths_and_writes_a_results_file(tmp_path, monkeypatch):
    import json

    from magicbokeh.inference.benchmark import _write_small_image_results, small_image_speedup

    rows = small_image_speedup([(20, 12)], [2.0], network="pointwise", tile=64, stride=32)
    assert len(rows) == 1 and rows[0]["output"] == "40x24"
    assert rows[0]["old_seconds"] > 0 and rows[0]["new_seconds"] > 0
    assert rows[0]["ratio"] == pytest.approx(rows[0]["old_seconds"] / rows[0]["new_seconds"])
    monkeypatch.setenv("MAGICBOKEH_RESULTS_DIR", str(tmp_path))
    path = _write_small_image_results("small", rows, {"network": "pointwise", "tile": 64, "stride": 32})
    document = json.loads(path.read_text())
    assert document["tables"]["speedup"]["rows"][0][:3] == ["20x12", 2.0, "40x24"]


@pytest.mark.slow  # two child processes
def test_memory_sweep_writes_its_results_file(results_elsewhere, capsys):
    from magicbokeh.utils.results import Table, read_results

    assert main(["--sizes", "64x48", "--tile", "32", "--stride", "16", "--results", "inference_test"]) == 0
    document = read_results("inference_test")  # the tests' results folder (conftest.py)
    table = Table.from_json(document["tables"]["memory"])
    assert [row[:2] for row in table.rows] == [["64×48", "tiled"], ["64×48", "untiled"]]
    tiled, untiled = document["figures"]["rows"]
    assert table.rows[0][4] == tiled["extra_mb"] and untiled["ratio_to_untiled"] == pytest.approx(1.0)
    assert document["figures"]["settings"]["tile"] == 32 and "wrote" in capsys.readouterr().out
