"""The degradation-presets comparison runs end to end on tiny crops and writes a well-formed results file (its
numbers are only checked for structure: same parameters, so the reference engine's paired difference is 0)."""

from __future__ import annotations

import importlib.util
import math

import pytest

from magicbokeh.data import degradation_presets
from magicbokeh.utils.config import CONFIG_DIR
from magicbokeh.utils.results import read_results


def test_comparison_writes_one_table_per_size(tmp_path, capsys):
    argv = ["--sizes", "48", "40", "--seeds", "1", "--out-dir", str(tmp_path)]  # 40 → LR 10: padded to 16
    assert degradation_presets.main(argv) == 0
    document = read_results(degradation_presets.RESULTS_NAME, tmp_path)
    assert set(document["tables"]) == {"psnr_48", "psnr_40"}
    engines = document["figures"]["sizes"]["48"]
    assert list(engines) == [engine.name for engine in degradation_presets.ENGINES]
    assert engines["realesrgan"]["delta_db"] == 0.0
    assert all(math.isfinite(values["psnr_db"]) for values in engines.values())
    assert document["figures"]["crops_per_size"] == len(degradation_presets.PHOTOS)
    assert "osediff" in capsys.readouterr().out


def test_scripts_benchmark_dispatches_it_and_reports_bad_arguments_in_one_line(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("benchmark_script", CONFIG_DIR.parent / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.BENCHMARKS["degradation-presets"] == degradation_presets.__name__
    with pytest.raises(SystemExit) as exit_info:
        script.main(["degradation-presets", "--sizes", "8", "--seeds", "1", "--out-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --sizes must be ≥ 16 and --seeds ≥ 1, got [8] and 1"
    assert not list(tmp_path.iterdir())  # nothing written
