"""NYUv2/KITTI readers on folders written in the test, and the clean/degraded depth evaluation."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from magicbokeh.data.depth_benchmarks import KITTI, NYUV2, DepthBenchmarkDataset, evaluation_crop
from magicbokeh.data.io import write_image
from magicbokeh.depth.benchmark_eval import evaluate_depth_benchmark, main
from magicbokeh.errors import DatasetError


def _write_pair(root, name, depth_metres, scale, size=(48, 64)):
    height, width = size
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(len(name)))
    write_image(root / f"{name}.png", image)
    raw = np.round(depth_metres * scale).astype(np.uint16)
    cv2.imwrite(str(root / f"{name}_depth.png"), raw)


class _ExactDisparity:
    """A 'model' returning the true inverse depth (up to an affine map, which alignment removes)."""

    def __init__(self, depth):
        self.depth = depth

    def predict_disparity(self, images):
        return 3.0 / self.depth[None].clamp_min(1e-3) + 0.5


def test_nyu_reader_units_crop_and_validity(tmp_path):
    depth = np.full((48, 64), 2.5, dtype=np.float32)
    depth[0, 0] = 0.0
    _write_pair(tmp_path, "a", depth, 1000.0)
    (tmp_path / "split.txt").write_text("/a.png /a_depth.png 518.8\n\n")
    sample = DepthBenchmarkDataset("nyuv2", tmp_path / "split.txt", tmp_path)[0]
    assert sample["image"].shape == (3, 48, 64)
    torch.testing.assert_close(sample["depth"][0, 5, 5], torch.tensor(2.5))
    assert torch.equal(sample["valid"], evaluation_crop(NYUV2, 48, 64) & (sample["depth"] > 0))
    assert not sample["valid"][0, 0, 0]


def test_kitti_skips_frames_without_ground_truth_and_scales_by_256(tmp_path):
    _write_pair(tmp_path, "b", np.full((48, 64), 40.0, dtype=np.float32), 256.0)
    (tmp_path / "split.txt").write_text("b.png b_depth.png 721.5\nc.png None 721.5\n")
    dataset = DepthBenchmarkDataset("kitti", tmp_path / "split.txt", tmp_path)
    assert len(dataset) == 1
    sample = dataset[0]
    torch.testing.assert_close(sample["depth"].max(), torch.tensor(40.0))
    assert sample["valid"].sum() == evaluation_crop(KITTI, 48, 64).sum()


def test_reader_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="split file"):
        DepthBenchmarkDataset("nyuv2", tmp_path / "missing.txt", tmp_path)
    (tmp_path / "bad.txt").write_text("only_one_field.png\n")
    with pytest.raises(DatasetError, match="line 1"):
        DepthBenchmarkDataset("nyuv2", tmp_path / "bad.txt", tmp_path)
    with pytest.raises(DatasetError, match="unknown depth benchmark"):
        DepthBenchmarkDataset("make3d", tmp_path / "bad.txt", tmp_path)
    _write_pair(tmp_path, "d", np.full((32, 40), 2.0, dtype=np.float32), 1000.0, size=(32, 40))
    write_image(tmp_path / "d.png", torch.rand(3, 30, 40))  # image no longer matches its depth map
    (tmp_path / "split.txt").write_text("d.png d_depth.png\n")
    with pytest.raises(DatasetError, match="size mismatch"):
        DepthBenchmarkDataset("nyuv2", tmp_path / "split.txt", tmp_path)[0]


def test_exact_disparity_scores_perfectly_in_both_scenarios(tmp_path):
    depth = np.tile(np.linspace(1.0, 9.0, 64, dtype=np.float32), (48, 1))
    _write_pair(tmp_path, "e", depth, 1000.0)
    (tmp_path / "split.txt").write_text("e.png e_depth.png\n")
    dataset = DepthBenchmarkDataset("nyuv2", tmp_path / "split.txt", tmp_path)
    model = _ExactDisparity(dataset[0]["depth"])
    results = evaluate_depth_benchmark(model, dataset, degradation=lambda images, generator: images * 0.5)
    assert results["count"] == 1
    for scenario in ("clean", "degraded", "average"):
        assert results[scenario]["abs_rel"] < 2e-3 and results[scenario]["delta1"] == 1.0


def test_cli_with_tiny_random_model_writes_results(tmp_path, capsys):
    _write_pair(
        tmp_path, "f", np.full((56, 56), 3.0, dtype=np.float32) + np.eye(56, dtype=np.float32), 1000.0, size=(56, 56)
    )
    (tmp_path / "split.txt").write_text("f.png f_depth.png\n")
    out = tmp_path / "results.json"
    argv = [
        "--dataset",
        "nyuv2",
        "--split",
        str(tmp_path / "split.txt"),
        "--image-root",
        str(tmp_path),
        "--size",
        "tiny",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"clean", "degraded", "average", "count"}
    assert "degraded: AbsRel" in capsys.readouterr().out
