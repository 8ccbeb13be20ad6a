"""Runner end to end on a toy benchmark: predict → score (rerunnable, resumable) → report; measures and baselines."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from magicbokeh.errors import ConfigError, DatasetError
from magicbokeh.evaluation import runner
from magicbokeh.evaluation.baselines import Method, build_method
from magicbokeh.evaluation.evaluate import run_evaluation
from magicbokeh.evaluation.inputs import Protocol, SampleInputs
from magicbokeh.evaluation.manifest import benchmark_record, build_manifest
from magicbokeh.evaluation.measures import controllability, in_focus_psnr, laplacian_variance, masked_psnr
from magicbokeh.evaluation.reports import write_report
from tests.evaluation.conftest import SIZE, toy_renderer


def _manifest(root, **parts):
    return build_manifest(benchmark=benchmark_record(root, "toy"), protocol=Protocol().record(), **parts)


@pytest.mark.slow
def test_predict_score_report_end_to_end(benchmark, tmp_path):
    run_dir = tmp_path / "run"
    _, samples = runner.load_samples(benchmark)
    inputs = SampleInputs(Protocol(), run_dir)
    methods = [build_method("bicubic"), build_method("bicubic_renderer", renderer=toy_renderer)]
    assert runner.predict(methods, samples, run_dir, inputs) == 2 * len(samples)
    assert runner.predict(methods, samples, run_dir, inputs) == 0  # resumable: nothing left to do

    summary = runner.score(run_dir, samples, ["psnr", "ssim_y"], inputs, benchmark_name="toy", batch_size=3)
    with (run_dir / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * len(samples)
    assert [(r["method"], r["id"]) for r in rows] == [(m, s.id) for m in ("bicubic", "bicubic_renderer")
                                                      for s in samples]  # fmt: skip
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


def test_batched_scores_equal_one_image_at_a_time(benchmark, tmp_path):
    _, samples = runner.load_samples(benchmark, max_samples=5)
    results = {}
    for batch_size in (1, 4):
        run_dir = tmp_path / f"run{batch_size}"
        inputs = SampleInputs(Protocol(), run_dir)
        runner.predict([build_method("bicubic")], samples, run_dir, inputs)
        runner.score(run_dir, samples, ["psnr", "ssim"], inputs, batch_size=batch_size)
        results[batch_size] = runner.read_rows(run_dir / "per_image.csv")
    assert results[1] == results[4]


def test_score_stage_reruns_alone_and_keeps_finished_rows(benchmark, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _, samples = runner.load_samples(benchmark, max_samples=3)
    inputs = SampleInputs(Protocol(), run_dir)
    runner.predict([build_method("bicubic")], samples, run_dir, inputs)
    runner.score(run_dir, samples, ["psnr"], inputs)
    calls = []
    original = runner._metric_scores
    monkeypatch.setattr(runner, "_metric_scores", lambda m, p, t, ids: calls.extend(ids) or original(m, p, t, ids))
    runner.score(run_dir, samples, ["psnr"], inputs)
    assert calls == []  # every row cached
    runner.score(run_dir, samples, ["psnr", "ssim"], inputs)  # a new metric: rows are recomputed
    assert len(calls) == 3


def test_several_seeds_give_mean_and_seed_std(benchmark, tmp_path):
    run_dir = tmp_path / "run"
    _, samples = runner.load_samples(benchmark, max_samples=2)
    inputs = SampleInputs(Protocol(), run_dir)

    def noisy(case, generator):
        images = case.prepared.upsampled
        return images + 0.02 * torch.randn(images.shape, generator=generator)

    runner.predict([Method("noisy", noisy, stochastic=True)], samples, run_dir, inputs, seeds=[0, 1, 2])
    summary = runner.score(run_dir, samples, ["psnr"], inputs)
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
    inputs = SampleInputs(Protocol(), tmp_path / "run")
    manifest = _manifest(benchmark)
    with pytest.raises(ConfigError, match="unknown or no stage"):
        run_evaluation(benchmark, tmp_path / "run", [], ["psnr"], inputs, manifest=manifest, stages=["plot"])
    with pytest.raises(ConfigError, match="selects no sample"):  # not "run the predict stage first"
        run_evaluation(benchmark, tmp_path / "run", [build_method("bicubic")], ["psnr"], inputs, manifest=manifest,
                       max_samples=0)  # fmt: skip
    _, samples = runner.load_samples(benchmark, max_samples=1)
    clean = SampleInputs(Protocol(input="hq"), tmp_path / "run").case(samples[0])
    degraded = inputs.case(samples[0])
    assert clean.prepared.images.shape == degraded.prepared.images.shape == (1, 3, SIZE, SIZE)
    assert not torch.equal(clean.prepared.images, degraded.prepared.images)


def test_score_and_report_stages_run_alone_from_disk(benchmark, tmp_path):
    run_dir = tmp_path / "run"
    inputs = SampleInputs(Protocol(), run_dir)
    manifest = _manifest(benchmark)
    common = {"manifest": manifest, "max_samples": 2, "num_grid_samples": 1}
    with pytest.raises(DatasetError, match="run the score stage first"):
        run_evaluation(benchmark, run_dir, [], ["psnr"], inputs, stages=["report"], **common)
    run_evaluation(benchmark, run_dir, [build_method("bicubic")], ["psnr"], inputs, stages=["predict"], **common)
    assert not (run_dir / "per_image.csv").exists()
    summary = run_evaluation(benchmark, run_dir, [], ["psnr", "ssim"], inputs, stages=["score"], **common)
    assert set(summary["methods"]["bicubic"]) >= {"psnr", "ssim"}
    assert run_evaluation(benchmark, run_dir, [], ["psnr"], inputs, stages=["report"], **common) == summary
    assert (run_dir / "report.md").is_file() and "| bicubic |" in (run_dir / "report.md").read_text()


def test_table_places_the_papers_row_beside_ours():
    summary = {
        "benchmark": "ebb400_lq",
        "methods": {"model": {"psnr_y": {"mean": 24.5, "std": 1.0, "count": 4, "seeds": 1}}},
        "reference": {"source": "Paper, Table 1", "row": "MagicBokeh", "method": "model",
                      "metrics": {"psnr_y": 24.23, "lpips": 0.2786}},
    }  # fmt: skip
    table = runner.markdown_table(summary)
    assert "Against the paper (Paper, Table 1):" in table
    assert "| psnr_y ↑ | 24.5 | 24.23 | +0.27 |" in table
    assert "lpips" not in table.split("Against")[1]  # not scored: no row
    summary["methods"]["model"] = {}
    assert "no metric of the published row was scored" in runner.markdown_table(summary)


def test_a_checkpoint_hash_ignores_the_order_of_safetensors_metadata(tmp_path):
    """safetensors writes its metadata from a hash map: the same weights saved by two processes may list the keys in
    another order; the checkpoint's identity must not change with it (and must change with the weights)."""
    import torch
    from safetensors.torch import save_file

    from magicbokeh.evaluation.manifest import checkpoint_record

    tensors = {"a": torch.arange(4.0), "b": torch.ones(2, 2)}
    records = []
    for name, metadata in (("one", {"format": "pt", "x": "1"}), ("two", {"x": "1", "format": "pt"})):
        folder = tmp_path / name
        folder.mkdir()
        save_file(tensors, str(folder / "model.safetensors"), metadata=metadata)
        (folder / "config.json").write_text("{}")
        records.append(checkpoint_record(folder)["sha256"])
    assert records[0] == records[1]
    save_file({**tensors, "a": torch.arange(4.0) + 1}, str(tmp_path / "two" / "model.safetensors"), metadata={"x": "1"})
    assert checkpoint_record(tmp_path / "two")["sha256"] != records[0]
