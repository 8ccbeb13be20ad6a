"""scripts/evaluate.py end to end (subprocesses, exit codes) with tiny random-weight networks on a toy benchmark:
the model method equals scripts/render.py's output, rescoring from disk, refusals, and a 2-process launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magicbokeh.data.io import write_disparity, write_image
from tests.evaluation.conftest import make_benchmark

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # every test starts Python + torch + the networks in subprocesses
BENCHMARK_META = {"degradation_preset": "realesrgan", "degradation": {"scale": 4.0}, "max_coc_px": 12.0}


def _mixed_benchmark(root: Path) -> Path:
    """Two 40×44 scenes × K ∈ {8, 16}: scene s0 ships disparity maps and focus values, scene s1 neither (the
    paper's EBB400-LQ layout: disparity estimated from the LQ input, focus from the subject mask)."""
    make_benchmark(root, K_values=(8.0, 16.0), height=40, width=44, meta=BENCHMARK_META)
    index = json.loads((root / "index.json").read_text())
    for entry in index["samples"]:
        if entry["id"].startswith("s1"):
            entry["disparity"], entry["focus_disparity"] = None, None
    (root / "index.json").write_text(json.dumps(index))
    return root


def _run(script: str, *overrides: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable]), str(ROOT / "scripts" / script), *overrides]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT, check=False)


def _evaluate(tmp_path: Path, weights: Path, bench: Path, run_id: str, *overrides: str, launcher=None):
    return _run(
        "evaluate.py", f"paths.output_dir={tmp_path / 'out'}", f"run_id={run_id}", f"benchmark.root={bench}",
        "benchmark.name=toy", "benchmark.focus=mask", "depth_model.size=tiny",
        f"depth_model.weights={weights / 'depth'}", "depth_model.input_size=null", "pipeline.tile.size=32",
        "pipeline.tile.stride=16", *overrides,
        launcher=launcher,
    )  # fmt: skip


def test_model_predictions_equal_render_and_rescoring_and_refusals(tmp_path, tiny_weights):
    bench = _mixed_benchmark(tmp_path / "bench")
    ckpt = f"ckpt={tiny_weights / 'ckpt'}"
    result = _evaluate(tmp_path, tiny_weights, bench, "a", ckpt, "methods=[model,bicubic]", "metrics.names=[psnr]")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "degradation scale: checkpoint 2.0, benchmark 4.0" in log  # trained at ×2, benchmark degraded at ×4
    run_dir = tmp_path / "out" / "eval" / "a"
    assert sorted(p.stem for p in (run_dir / "disparity").glob("*.npy")) == ["s1_K16", "s1_K8"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["predictions"]["pipeline"]["tile_size"] == 32 and manifest["predictions"]["checkpoint"]["sha256"]

    # scripts/render.py on the same image, disparity (given, or from the same depth weights), focus mask, K and
    # pipeline settings writes the same PNG, byte for byte.
    common = [ckpt, "scale=1", "tile.size=32", "tile.stride=16", "color_fix=adain", "depth_model.size=tiny",
              f"depth_model.weights={tiny_weights / 'depth'}", "depth_model.input_size=null"]  # fmt: skip
    for sample_id, K, disparity in (("s0_K8", 8, [f"disparity={bench / 'disparity' / 's0.npy'}"]), ("s1_K16", 16, [])):
        scene = sample_id.split("_")[0]
        output = tmp_path / f"render_{sample_id}"
        rendered = _run(
            "render.py", f"input={bench / 'lq' / f'{sample_id}.png'}", f"focus.mask={bench / 'mask' / f'{scene}.png'}",
            f"K={K}", f"output={output}", f"hydra.run.dir={tmp_path / 'hydra'}", *common, *disparity,
        )  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr[-3000:]
        ours = run_dir / "predictions" / "model" / "seed0" / f"{sample_id}.png"
        assert (output / f"{sample_id}.png").read_bytes() == ours.read_bytes(), sample_id

    # Rescore from disk only: no checkpoint needed, other metrics.
    rescored = _evaluate(tmp_path, tiny_weights, bench, "a", "stages=[score,report]", "metrics.names=[psnr,ssim]")
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert "| model |" in (run_dir / "table.md").read_text() and (run_dir / "report.md").is_file()
    assert "ssim" in json.loads((run_dir / "summary.json").read_text())["methods"]["model"]

    # Another checkpoint under the same run_id is refused (exit 2, one line), predictions untouched.
    stamp = (run_dir / "predictions" / "model" / "seed0" / "s0_K8.png").stat().st_mtime_ns
    refused = _evaluate(tmp_path, tiny_weights, bench, "a", f"ckpt={tiny_weights / 'other_ckpt'}", "methods=[model]")
    assert refused.returncode == 2 and "error: " in refused.stderr and "another manifest" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (run_dir / "predictions" / "model" / "seed0" / "s0_K8.png").stat().st_mtime_ns == stamp


def test_wrong_size_disparity_or_mask_exits_2_like_render(tmp_path, tiny_weights):
    """One line, exit 2: evaluate.py checks sizes with render.py's own function (the pipeline's prepare and
    focus_disparity), so the messages are the same."""
    for which in ("disparity", "mask"):
        bench = _mixed_benchmark(tmp_path / which)
        if which == "disparity":
            write_disparity(bench / "disparity" / "s0.npy", torch.rand(1, 20, 22))
        else:
            write_image(bench / "mask" / "s0.png", torch.ones(1, 20, 22))
        result = _evaluate(tmp_path, tiny_weights, bench, which, "methods=[bicubic]")
        assert result.returncode == 2, result.stderr[-3000:]
        assert f"error: {which} of size 22×20 (W×H) matches neither the input" in result.stderr
    rendered = _run(
        "render.py", "mode=classical", f"input={bench / 'lq' / 's0_K8.png'}", f"focus.mask={bench / 'mask' / 's0.png'}",
        f"disparity={bench / 'disparity' / 's0.npy'}", "scale=1", f"output={tmp_path / 'render'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    )  # fmt: skip
    assert rendered.returncode == 2 and "error: mask of size 22×20 (W×H) matches neither" in rendered.stderr


def test_two_processes_give_the_one_process_results(tmp_path, tiny_weights):
    bench = _mixed_benchmark(tmp_path / "bench")
    settings = [
        f"ckpt={tiny_weights / 'ckpt'}", "methods=[model,bicubic,bicubic_renderer]", "metrics.names=[psnr,ssim]",
        "report.num_grid_samples=0",
    ]  # fmt: skip
    one = _evaluate(tmp_path, tiny_weights, bench, "one", *settings)
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = _evaluate(tmp_path, tiny_weights, bench, "two", *settings, launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    log = two.stdout + two.stderr
    assert "MULTI_CPU, process 0 of 2" in log and "MULTI_CPU, process 1 of 2" in log, log[-3000:]
    # Each process predicted its own half of the 4 samples × 3 methods.
    assert "process 1 of 2: 6 prediction(s) made for 2 sample(s)" in log, log[-3000:]
    assert "process 2 of 2: 6 prediction(s) made for 2 sample(s)" in log, log[-3000:]
    runs = tmp_path / "out" / "eval"
    for name in ("per_image.csv", "summary.json", "table.md"):
        assert (runs / "two" / name).read_bytes() == (runs / "one" / name).read_bytes(), name
    for path in sorted((runs / "one" / "predictions").rglob("*.png")):
        twin = runs / "two" / path.relative_to(runs / "one")
        assert twin.read_bytes() == path.read_bytes(), path.name
