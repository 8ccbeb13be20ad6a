"""scripts/make_dataset.py: subcommands run end to end; user errors print one line and exit 2."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from magicbokeh.data.benchmark_index import load_benchmark_index
from magicbokeh.data.datasets import RenderedBokehDataset
from magicbokeh.data.io import write_image
from magicbokeh.utils.config import CONFIG_DIR


@pytest.fixture(scope="module")
def make_dataset():
    spec = importlib.util.spec_from_file_location("make_dataset", CONFIG_DIR.parent / "scripts" / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_folder_is_readable_by_the_rendered_dataset_and_resumes(make_dataset, tmp_path, capsys):
    argv = ["synthetic", "--out", str(tmp_path / "syn"), "--count", "2", "--size", "32", "--max-coc-px", "2"]
    assert make_dataset.main(argv) == 0
    image = tmp_path / "syn" / "image" / "000001.png"
    stamp = image.stat().st_mtime_ns
    assert make_dataset.main(argv) == 0 and image.stat().st_mtime_ns == stamp
    dataset = RenderedBokehDataset(root=tmp_path / "syn", crop_size=16, max_coc_px=2, renderer={"num_layers": 6})
    assert len(dataset) == 2 and dataset[1]["meta"]["focus_rule"] in ("subject", "random")
    assert "wrote" in capsys.readouterr().out


def test_sr_benchmark_subcommand(make_dataset, tmp_path):
    write_image(tmp_path / "hr" / "a.png", torch.rand(3, 16, 16))
    write_image(tmp_path / "lr" / "a.png", torch.rand(3, 4, 4))
    argv = ["sr-benchmark", "--hr-dir", str(tmp_path / "hr"), "--lr-dir", str(tmp_path / "lr"), "--out", str(tmp_path)]
    assert make_dataset.main([*argv, "--name", "drealsr"]) == 0
    assert load_benchmark_index(tmp_path)[0]["name"] == "drealsr"


def test_user_error_exits_2_with_one_line(make_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        make_dataset.main(["ebb400-lq", "--ebb-root", str(tmp_path), "--disparity-dir", str(tmp_path), "--out", "x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: no EBB! photos")
