"""The paper's protocol in process: disparity estimated from the LQ input and cached, focus from the mask; the run
manifest that refuses stale results; the degradation check; the model methods through the inference pipeline."""

from __future__ import annotations

import shutil

import pytest
import torch

from magicbokeh.data.io import read_disparity, read_image, write_disparity
from magicbokeh.depth import build_depth_model
from magicbokeh.depth.focus import focus_from_mask
from magicbokeh.errors import DatasetError, InvalidInputError
from magicbokeh.evaluation import runner
from magicbokeh.evaluation.baselines import BicubicPipeline, PipelineSettings, build_method, build_methods
from magicbokeh.evaluation.evaluate import degradation_mismatches, run_evaluation
from magicbokeh.evaluation.inputs import Protocol, SampleInputs, read_mask
from magicbokeh.evaluation.manifest import (
    StaleRunError,
    benchmark_record,
    build_manifest,
    checkpoint_record,
    read_manifest,
)
from magicbokeh.inference import MagicBokehPipeline
from magicbokeh.models import MagicBokehModel
from tests.evaluation.conftest import make_benchmark, toy_renderer


class CountingDepth:
    """The tiny depth network, counting how often it is asked for a disparity map."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = build_depth_model("tiny", None, input_size=None)
        self.calls = 0

    def predict_disparity(self, images):
        self.calls += 1
        return self.model.predict_disparity(images)


def _inputs(run_dir, depth, **protocol):
    return SampleInputs(Protocol(**protocol), run_dir, BicubicPipeline(depth_model=depth))


def _manifest(root, protocol=None, checkpoint=None, crop_border=0, pipeline=None):
    return build_manifest(
        benchmark=benchmark_record(root, "toy"), protocol=(protocol or Protocol()).record(), checkpoint=checkpoint,
        pipeline=pipeline, scores={"crop_border": crop_border},
    )  # fmt: skip


@pytest.mark.slow
def test_benchmark_without_disparity_runs_end_to_end_and_reuses_the_cached_estimate(tmp_path):
    root = make_benchmark(tmp_path / "bench", K_values=(8.0, 32.0), with_disparity=False)
    run_dir, depth = tmp_path / "run", CountingDepth()
    protocol = Protocol(focus="mask")
    methods = [build_method("bicubic"), build_method("bicubic_renderer", renderer=toy_renderer)]
    kwargs = {"manifest": _manifest(root, protocol), "num_grid_samples": 1}
    summary = run_evaluation(root, run_dir, methods, ["psnr"], _inputs(run_dir, depth, focus="mask"), **kwargs)
    _, samples = runner.load_samples(root)
    assert depth.calls == len(samples)  # once per sample, shared by both methods and by the score stage
    cached = sorted(p.stem for p in (run_dir / "disparity").glob("*.npy"))
    assert cached == sorted(s.id for s in samples)
    # The focus is the median of the estimated disparity inside the subject mask (the release's rule).
    rows = runner.read_rows(run_dir / "per_image.csv")
    first = samples[0]
    expected_focus = focus_from_mask(read_disparity(run_dir / "disparity" / f"{first.id}.npy")[None],
                                     read_mask(first.mask)[None])  # fmt: skip
    assert float(rows[0]["focus_disparity"]) == pytest.approx(float(expected_focus), abs=0)
    assert summary["methods"]["bicubic_renderer"]["psnr_in_focus"]["count"] == len(samples)

    # Rerun with new predictions to make (another method), and a score-only run: the depth model is not called.
    shutil.rmtree(run_dir / "predictions" / "bicubic")
    rerun = run_evaluation(root, run_dir, methods, ["psnr"], _inputs(run_dir, depth, focus="mask"), **kwargs)
    assert depth.calls == len(samples) and rerun == summary
    run_evaluation(root, run_dir, [], ["psnr", "ssim"], _inputs(run_dir, None, focus="mask"), stages=["score"],
                   manifest=kwargs["manifest"])  # fmt: skip
    # Without the cache the score stage says what to do instead of estimating.
    (run_dir / "disparity" / f"{first.id}.npy").unlink()
    (run_dir / "per_image.csv").unlink()
    with pytest.raises(DatasetError, match="run the predict stage"):
        run_evaluation(root, run_dir, [], ["psnr"], _inputs(run_dir, None, focus="mask"), stages=["score"],
                       manifest=kwargs["manifest"])  # fmt: skip


def test_estimate_ignores_the_index_maps_and_index_focus_needs_a_value(tmp_path):
    root = make_benchmark(tmp_path / "bench", scenes=1, K_values=(16.0,))
    _, samples = runner.load_samples(root)
    depth = CountingDepth()
    estimated = _inputs(tmp_path / "run", depth, disparity="estimate").case(samples[0])
    given = _inputs(tmp_path / "run2", depth).case(samples[0])
    assert depth.calls == 1 and not torch.equal(estimated.prepared.disparity, given.prepared.disparity)
    assert torch.equal(given.prepared.disparity, read_disparity(samples[0].disparity)[None])
    no_focus = make_benchmark(tmp_path / "nofocus", scenes=1, K_values=(16.0,), with_disparity=False)
    with pytest.raises(DatasetError, match="benchmark.focus=mask"):
        _inputs(tmp_path / "run3", depth).case(runner.load_samples(no_focus)[1][0])
    fixed = _inputs(tmp_path / "run4", None, focus=0.25).case(samples[0])
    assert fixed.focus_disparity == 0.25


@pytest.mark.parametrize("which", ["disparity", "mask"])
def test_wrong_size_disparity_or_mask_is_refused_like_render(tmp_path, which):
    root = make_benchmark(tmp_path / "bench", scenes=1, K_values=(16.0,))
    _, samples = runner.load_samples(root)
    if which == "disparity":
        write_disparity(samples[0].disparity, torch.rand(1, 20, 30))
    else:
        from magicbokeh.data.io import write_image

        write_image(samples[0].mask, torch.ones(1, 20, 30))
    inputs = _inputs(tmp_path / "run", None, focus="mask")
    with pytest.raises(InvalidInputError, match=f"{which} of size 30×20 \\(W×H\\) matches neither the input"):
        inputs.case(samples[0])


def test_a_rerun_with_another_checkpoint_or_benchmark_is_refused(tmp_path, tiny_weights):
    root = make_benchmark(tmp_path / "bench", scenes=1, K_values=(8.0,))
    run_dir = tmp_path / "run"
    tiles = PipelineSettings().record()
    first = _manifest(root, checkpoint=checkpoint_record(tiny_weights / "ckpt"), pipeline=tiles)
    other = _manifest(root, checkpoint=checkpoint_record(tiny_weights / "other_ckpt"), pipeline=tiles)
    assert first["predictions"]["checkpoint"]["sha256"] != other["predictions"]["checkpoint"]["sha256"]
    methods = [build_method("bicubic")]
    inputs = _inputs(run_dir, None)
    run_evaluation(root, run_dir, methods, ["psnr"], inputs, manifest=first, stages=["predict", "score"])
    with pytest.raises(StaleRunError, match="checkpoint: sha256"):
        run_evaluation(root, run_dir, methods, ["psnr"], inputs, manifest=other, stages=["predict", "score"])
    with pytest.raises(StaleRunError, match="checkpoint"):  # naming another checkpoint when only rescoring
        run_evaluation(root, run_dir, [], ["psnr"], inputs, manifest=other, stages=["score"])
    run_evaluation(root, run_dir, [], ["psnr"], inputs, manifest=_manifest(root), stages=["score"])  # no ckpt: fine
    # Predicting more with a baseline only (no checkpoint, no pipeline) is fine and keeps the model's record.
    run_evaluation(root, run_dir, methods, ["psnr"], inputs, manifest=_manifest(root), stages=["predict"])
    assert read_manifest(run_dir)["predictions"]["checkpoint"] == first["predictions"]["checkpoint"]
    with pytest.raises(StaleRunError, match="pipeline"):
        changed = _manifest(root, pipeline=PipelineSettings(color_fix="wavelet").record())
        run_evaluation(root, run_dir, methods, ["psnr"], inputs, manifest=changed, stages=["predict"])
    with pytest.raises(StaleRunError, match="scores.crop_border: 0 -> 4"):
        run_evaluation(root, run_dir, [], ["psnr"], inputs, manifest=_manifest(root, crop_border=4), stages=["score"])
    moved = make_benchmark(tmp_path / "bench2", scenes=1, K_values=(8.0,))
    with pytest.raises(StaleRunError, match="benchmark"):
        run_evaluation(moved, run_dir, [], ["psnr"], inputs, manifest=_manifest(moved), stages=["score"])
    with pytest.raises(StaleRunError, match="predict stage with overwrite=true"):  # rescoring cannot redo them
        run_evaluation(root, run_dir, [], ["psnr"], inputs, manifest=other, stages=["score"], overwrite=True)
    # overwrite=true with the predict stage clears and redoes; the manifest then names the new checkpoint.
    run_evaluation(root, run_dir, methods, ["psnr"], inputs, manifest=other, stages=["predict", "score"],
                   overwrite=True)  # fmt: skip
    assert read_manifest(run_dir)["predictions"]["checkpoint"] == other["predictions"]["checkpoint"]
    # Results with no manifest at all (unknown origin) are refused too.
    (run_dir / "manifest.json").unlink()
    with pytest.raises(StaleRunError, match="no manifest.json"):
        run_evaluation(root, run_dir, methods, ["psnr"], inputs, manifest=other, stages=["predict"])


def test_degradation_mismatch_lines():
    trained = {"degradation_preset": "realesrgan", "degradation": {"scale": 2.0, "jpeg_prob": 1.0},
               "max_coc_px": 12.0}  # fmt: skip
    built = {"degradation_preset": "realesrgan", "degradation": {"scale": 4.0, "jpeg_prob": 1.0}, "max_coc_px": 8.0}
    lines = degradation_mismatches(trained, built)
    assert lines == [
        "degradation scale: checkpoint 2.0, benchmark 4.0",
        "bokeh scale max_coc_px: checkpoint 12, benchmark targets 8",
    ]
    assert degradation_mismatches(trained, {**built, "degradation": trained["degradation"], "max_coc_px": 12.0}) == []
    assert degradation_mismatches({}, built) == []  # an older checkpoint that does not say: nothing to compare
    zoom = degradation_mismatches({**trained, "degradation_preset": "zoom"}, built)
    assert zoom[0] == "degradation preset: checkpoint 'zoom', benchmark 'realesrgan'"


@pytest.mark.parametrize(("tile_size", "tile_stride"), [(32, 16), (None, None)], ids=["tiled", "whole_image"])
def test_model_method_is_the_inference_pipeline(tmp_path, tiny_weights, tile_size, tile_stride):
    """The model method's output is MagicBokehPipeline.run on the same image, disparity, focus and K."""
    root = make_benchmark(tmp_path / "bench", scenes=1, K_values=(24.0,), height=40, width=44)
    _, samples = runner.load_samples(root)
    model = MagicBokehModel.from_pretrained(tiny_weights / "ckpt").eval()
    settings = PipelineSettings(tile_size=tile_size, tile_stride=tile_stride, color_fix="wavelet")
    method = build_methods(["model"], model=model, pipeline=settings)[0]
    case = _inputs(tmp_path / "run", None).case(samples[0])
    pipeline = MagicBokehPipeline(model, tile_size=tile_size, tile_stride=tile_stride, color_fix="wavelet")
    expected = pipeline.run(
        read_image(samples[0].lq), focus=0.8, K=24.0, scale=1.0, disparity=read_disparity(samples[0].disparity)
    )
    assert torch.equal(method.run(case), expected.image)
    if tile_size is None:
        return
    # Sampling the VAE posterior: the seed decides the output.
    stochastic = build_methods(["model"], model=model, pipeline=settings, sample_posterior=True)[0]
    draws = [stochastic.run(case, torch.Generator().manual_seed(seed)) for seed in (0, 0, 1)]
    assert stochastic.stochastic and torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_ebb400_lq_config_is_the_paper_protocol_with_its_table_row():
    from magicbokeh.evaluation.metrics import metric_info
    from magicbokeh.utils.config import compose_config

    benchmark = compose_config("eval", ["benchmark=ebb400_lq"]).benchmark
    assert Protocol(input=benchmark.input, disparity=benchmark.disparity, focus=benchmark.focus) == Protocol(
        disparity="estimate", focus="mask"
    )
    paper = benchmark.paper
    assert paper.source and paper.method == "model"
    assert all(metric_info(name).name == name for name in paper.metrics)  # our registry's names, so they compare


def test_ebb400_lq_is_scored_with_the_release_preset_by_default_and_the_front_end_follows_it():
    """The paper's numbers come from the release's inference: EBB400-LQ defaults to pipeline.preset=release, other
    benchmarks to ours, and every method's input is prepared with that preset (8-bit disparity, its focus rules)."""
    from magicbokeh.inference.presets import get_preset
    from magicbokeh.utils.config import compose_config

    assert compose_config("eval", ["benchmark=ebb400_lq"]).pipeline.preset == "release"
    assert compose_config("eval", ["benchmark=ebb400_lq", "pipeline.preset=default"]).pipeline.preset == "default"
    assert compose_config("eval", ["benchmark=synthetic"]).pipeline.preset == "default"

    image = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    disparity = torch.rand(1, 1, 512, 512, generator=torch.Generator().manual_seed(1))
    release = BicubicPipeline(preset=get_preset("release")).prepare(image, scale=1.0, disparity=disparity)
    ours = BicubicPipeline().prepare(image, scale=1.0, disparity=disparity)
    assert torch.equal(release.disparity, torch.floor(disparity * 255) / 255)
    assert torch.equal(ours.disparity, disparity)
