"""Runner end to end on a toy benchmark: predict → score (rerunnable, resumable) → report; measures and baselines."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from magicbokeh.data.benchmark_index import BenchmarkSample, write_benchmark_index
from magicbokeh.data.io import write_disparity, write_image
from magicbokeh.errors import ConfigError
from magicbokeh.evaluation import runner
from magicbokeh.evaluation.baselines import build_method
from magicbokeh.evaluation.measures import controllability, in_focus_psnr, laplacian_variance, masked_psnr
from magicbokeh.evaluation.reports import write_report

SIZE = 32


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return images
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    horizontal = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(horizontal, kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)


def toy_renderer(images, disparity, focus, K):
    """Stand-in for the classical renderer: background (left half) blurred with σ ∝ K, subject (right half) sharp."""
    blurred = _gaussian_blur(images, float(K[0]) / 8.0)
    far = (disparity - focus.view(-1, 1, 1, 1)).abs() > 0.1
    return torch.where(far, blurred, images)


def _scene(seed: int):
    g = torch.Generator().manual_seed(seed)
    hq = F.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=SIZE, mode="bicubic").clamp(0, 1)
    hq = (hq + 0.15 * torch.rand(hq.shape, generator=g)).clamp(0, 1)  # texture so blur is measurable
    disparity = torch.full((1, 1, SIZE, SIZE), 0.8)
    disparity[..., : SIZE // 2] = 0.2  # left half far (background), right half near (subject)
    return hq, disparity


@pytest.fixture
def benchmark(tmp_path):
    """Two scenes × K ∈ {0, 8, 16, 32}; targets rendered by the toy renderer, LQ = 2× down-up of the HQ image."""
    root = tmp_path / "bench"
    samples = []
    for scene in range(2):
        hq, disparity = _scene(scene)
        write_image(root / "hq" / f"s{scene}.png", hq[0])
        write_disparity(root / "disparity" / f"s{scene}.npy", disparity[0])
        lq = F.interpolate(F.interpolate(hq, scale_factor=0.5, mode="area"), size=SIZE, mode="bicubic").clamp(0, 1)
        for K in (0.0, 8.0, 16.0, 32.0):
            sid = f"s{scene}_K{K:g}"
            target = toy_renderer(hq, disparity, torch.tensor([0.8]), torch.tensor([K]))
            write_image(root / "target" / f"{sid}.png", target[0])
            write_image(root / "lq" / f"{sid}.png", lq[0])
            samples.append(
                BenchmarkSample(id=sid, task="bokeh", lq=root / "lq" / f"{sid}.png",
                                target=root / "target" / f"{sid}.png", hq=root / "hq" / f"s{scene}.png",
                                disparity=root / "disparity" / f"s{scene}.npy", focus_disparity=0.8, K=K)
            )  # fmt: skip
    write_benchmark_index(root, "toy", samples, {"test": True})
    return root


@pytest.mark.slow
def test_predict_score_report_end_to_end(benchmark, tmp_path):
    run_dir = tmp_path / "run"
    _, samples = runner.load_samples(benchmark)
    methods = [build_method("bicubic"), build_method("bicubic_renderer", renderer=toy_renderer)]
    assert runner.predict(methods, samples, run_dir) == 2 * len(samples)
    assert runner.predict(methods, samples, run_dir) == 0  # resumable: nothing left to do

    summary = runner.score(run_dir, samples, ["psnr", "ssim_y"], benchmark_name="toy")
    with (run_dir / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * len(samples)
    assert {"psnr", "ssim_y", "psnr_in_focus", "oof_laplacian_var"} <= set(rows[0])
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == summary
    rendered, bicubic = summary["methods"]["bicubic_renderer"], summary["methods"]["bicubic"]
    assert rendered["psnr"]["count"] == len(samples) and {"mean", "std", "count"} <= set(rendered["psnr"])
    # The renderer baseline reproduces the targets' blur, so it beats plain bicubic on PSNR and follows K.
    assert rendered["psnr"]["mean"] > bicubic["psnr"]["mean"]
    assert rendered["controllability"]["mean"] < -0.5
    assert "controllability" not in bicubic  # same output for every K: no ranking within a scene
    table = (run_dir / "table.md").read_text()
    assert "| bicubic_renderer |" in table and "psnr ↑" in table

    report = write_report(run_dir, summary, rows, samples, num_grid_samples=2)
    text = report.read_text()
    assert (run_dir / "plots" / "psnr_vs_K.png").is_file() and (run_dir / "plots" / "psnr_bars.png").is_file()
    grids = sorted((run_dir / "grids").glob("*.png"))
    assert len(grids) == 2 and all(f"grids/{g.name}" in text for g in grids)
    assert "plots/psnr_vs_K.png" in text and "| bicubic |" in text


def test_score_stage_reruns_alone_and_keeps_finished_rows(benchmark, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _, samples = runner.load_samples(benchmark, max_samples=3)
    runner.predict([build_method("bicubic")], samples, run_dir)
    runner.score(run_dir, samples, ["psnr"])
    calls = []
    original = runner._score_one
    monkeypatch.setattr(runner, "_score_one", lambda *a: calls.append(a[0].id) or original(*a))
    runner.score(run_dir, samples, ["psnr"])
    assert calls == []  # every row cached
    runner.score(run_dir, samples, ["psnr", "ssim"])  # a new metric: rows are recomputed
    assert len(calls) == 3


def test_several_seeds_give_mean_and_seed_std(benchmark, tmp_path):
    run_dir = tmp_path / "run"
    _, samples = runner.load_samples(benchmark, max_samples=2)

    def noisy(images, disparity, focus, K, generator):
        return images + 0.02 * torch.randn(images.shape, generator=generator)

    method = runner.Method("noisy", noisy, stochastic=True)
    runner.predict([method], samples, run_dir, seeds=[0, 1, 2])
    summary = runner.score(run_dir, samples, ["psnr"])
    stats = summary["methods"]["noisy"]["psnr"]
    assert stats["seeds"] == 3 and stats["count"] == 6 and stats["seed_std"] > 0
    assert "±" in (run_dir / "table.md").read_text()


def test_model_methods_need_a_checkpoint():
    with pytest.raises(ConfigError, match="ckpt="):
        build_method("two_stage", renderer=toy_renderer)


def test_measures_against_hand_computation():
    images = torch.zeros(1, 3, 4, 4)
    references = torch.zeros(1, 3, 4, 4)
    references[..., :, 2:] = 0.1  # error 0.1 on the right half only
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :, :2] = True
    assert torch.isinf(masked_psnr(images, references, mask)).all()  # left half exact
    assert masked_psnr(images, references, ~mask).item() == pytest.approx(20.0)  # 10·log10(1/0.01)
    assert masked_psnr(images, references, torch.zeros_like(mask)).isnan().all()
    disparity = torch.zeros(1, 1, 4, 4)
    disparity[..., 2:] = 1.0
    # K = 32, focus 0: the right half has defocus 1 (out of focus), so only the exact left half is scored.
    assert torch.isinf(in_focus_psnr(images, references, disparity, 0.0, 32.0)).all()
    checker = (torch.arange(6).view(-1, 1) + torch.arange(6).view(1, -1)) % 2
    image = checker.float().expand(1, 3, 6, 6)
    region = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    # Luma of the checkerboard alternates 16 / 235 (BT.601); its Laplacian is ±4·219 on the 4×4 interior, eight
    # of each sign → mean 0, variance (4·219)².
    assert laplacian_variance(image, region).item() == pytest.approx((4 * 219.0) ** 2)
    assert controllability([0, 8, 16, 32], [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert math.isnan(controllability([8, 8, 8], [1.0, 2.0, 3.0]))
    # Pooled over two scenes of different texture the trend is masked; within each scene it is exact.
    K, sharp, scene = [0, 16, 32] * 2, [3.0, 2.0, 1.0, 30.0, 20.0, 10.0], ["a"] * 3 + ["b"] * 3
    assert controllability(K, sharp) > -0.5
    assert controllability(K, sharp, scene) == pytest.approx(-1.0)


def test_run_evaluation_checks_stages_and_clean_input_uses_hq(benchmark, tmp_path):
    from magicbokeh.evaluation.evaluate import run_evaluation

    with pytest.raises(ConfigError, match="unknown stage"):
        run_evaluation(benchmark, tmp_path / "run", [], ["psnr"], stages=["predict", "plot"])
    with pytest.raises(ConfigError, match="needs the score stage"):
        run_evaluation(benchmark, tmp_path / "run", [build_method("bicubic")], ["psnr"], stages=["predict", "report"])
    _, samples = runner.load_samples(benchmark, max_samples=1)
    clean = runner.load_sample(samples[0], "hq")
    degraded = runner.load_sample(samples[0], "lq")
    assert clean.images.shape == degraded.images.shape == (1, 3, SIZE, SIZE)
    assert not torch.equal(clean.images, degraded.images)
