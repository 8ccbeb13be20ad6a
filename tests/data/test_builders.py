"""Benchmark builders write folders the shared index reader accepts; builds are seeded and resumable."""

from __future__ import annotations

import pytest
import torch

from magicbokeh.data.benchmark_index import load_benchmark_index
from magicbokeh.data.builders import (
    build_ebb400_lq,
    build_sr_benchmark,
    build_synthetic_benchmark,
    describe_degradation,
    pair_sr_files,
)
from magicbokeh.data.degradations import RealESRGANDegradation
from magicbokeh.data.io import read_image, write_disparity, write_image
from magicbokeh.errors import DatasetError, ParameterError


def _photo(seed: int, height: int = 32, width: int = 48) -> torch.Tensor:
    base = torch.rand(3, height // 8, width // 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(base[None], size=(height, width), mode="bilinear")[0]


def test_synthetic_benchmark_and_resume(tmp_path):
    out = tmp_path / "bench"
    kwargs = {"num_scenes": 1, "size": 32, "K_values": (8, 32), "max_coc_px": 2, "seed": 3}
    info = describe_degradation("realesrgan", {"_target_": "magicbokeh.x", "scale": 4.0, "jpeg_prob": 1.0})
    build_synthetic_benchmark(out, RealESRGANDegradation(), degradation_info=info, **kwargs)
    header, samples = load_benchmark_index(out)
    assert len(samples) == 4 and header["meta"]["seed"] == 3
    # Recorded as checkpoints record their training degradation (config.json → training), for the mismatch check.
    assert header["meta"]["degradation_preset"] == "realesrgan"
    assert header["meta"]["degradation"] == {"scale": 4.0, "jpeg_prob": 1.0}
    assert {s.extra["focus_rule"] for s in samples} == {"subject", "background"} and {s.K for s in samples} == {8, 32}
    assert all(s.disparity and s.mask and s.hq and s.target for s in samples)
    first = read_image(samples[0].lq)
    stamp = samples[0].target.stat().st_mtime_ns
    build_synthetic_benchmark(out, RealESRGANDegradation(), **kwargs)  # resumes: nothing recomputed
    assert samples[0].target.stat().st_mtime_ns == stamp
    assert torch.equal(read_image(load_benchmark_index(out)[1][0].lq), first)
    with pytest.raises(ParameterError):
        build_synthetic_benchmark(out, RealESRGANDegradation(), focus_rules=("middle",))


def test_ebb400_lq_from_a_small_ebb_folder(tmp_path):
    for n in range(5):
        wide = _photo(n)
        bokeh = wide.clone()
        bokeh[:, :, 30:] = 0.5
        write_image(tmp_path / "ebb" / "original" / f"{n}.jpg", wide)
        write_image(tmp_path / "ebb" / "bokeh" / f"{n}.jpg", bokeh)
        write_disparity(tmp_path / "disp" / f"{n}.npy", torch.linspace(0, 1, 48).expand(1, 32, 48))
    out = tmp_path / "ebb400"
    build_ebb400_lq(tmp_path / "ebb", out, RealESRGANDegradation(), disparity_dir=tmp_path / "disp", count=3, seed=1)
    _, samples = load_benchmark_index(out)
    assert len(samples) == 3 and (out / "ids.txt").read_text().split() == [s.id for s in samples]
    assert all(s.task == "bokeh" and s.K == 16 and s.focus_disparity < 0.6 for s in samples)
    assert read_image(samples[0].lq).shape == (3, 32, 48)  # degraded, resized back to the native size
    assert samples[0].target.read_bytes() == (tmp_path / "ebb" / "bokeh" / f"{samples[0].id}.jpg").read_bytes()
    fixed = tmp_path / "fixed"
    build_ebb400_lq(tmp_path / "ebb", fixed, RealESRGANDegradation(), disparity_dir=tmp_path / "disp", ids=["4", "0"])
    assert [s.id for s in load_benchmark_index(fixed)[1]] == ["4", "0"]
    with pytest.raises(DatasetError, match="lacks the listed pairs"):
        build_ebb400_lq(tmp_path / "ebb", fixed, RealESRGANDegradation(), disparity_dir=tmp_path / "disp", ids=["9"])
    # The paper's layout: no disparity maps, no fixed focus; evaluation estimates both from the LQ input and mask.
    paper = tmp_path / "paper"
    build_ebb400_lq(tmp_path / "ebb", paper, RealESRGANDegradation(), count=2, seed=1)
    header, samples = load_benchmark_index(paper)
    assert all(s.disparity is None and s.focus_disparity is None and s.mask is not None for s in samples)
    assert header["meta"]["disparity"] == "estimate at evaluation"


def test_sr_benchmark_pairs_realsr_and_stablesr_layouts(tmp_path):
    for i in range(2):  # RealSR: HR and LR side by side in one folder
        write_image(tmp_path / "realsr" / f"Canon_00{i}_HR.png", _photo(i, 32, 32))
        write_image(tmp_path / "realsr" / f"Canon_00{i}_LR4.png", _photo(i, 8, 8))
    assert len(pair_sr_files(tmp_path / "realsr", tmp_path / "realsr")) == 2
    build_sr_benchmark(tmp_path / "realsr", tmp_path / "realsr", tmp_path / "out", name="realsr")
    header, samples = load_benchmark_index(tmp_path / "out")
    assert header["name"] == "realsr" and [s.id for s in samples] == ["Canon_000", "Canon_001"]
    assert all(s.task == "sr" and s.K == 0 for s in samples)
    assert read_image(samples[0].lq).shape == read_image(samples[0].target).shape == (3, 32, 32)
    write_image(tmp_path / "hr" / "0001.png", _photo(0, 16, 16))  # StableSR: test_HR / test_LR by name
    with pytest.raises(DatasetError, match=r"0001\.png' has no LR partner"):
        pair_sr_files(tmp_path / "hr", tmp_path / "realsr")


def test_ebb400_lq_empty_agreement_focuses_on_the_whole_image(tmp_path):
    wide = _photo(0)
    write_image(tmp_path / "ebb" / "original" / "0.jpg", wide)
    write_image(tmp_path / "ebb" / "bokeh" / "0.jpg", 1.0 - wide)  # no region agrees
    write_disparity(tmp_path / "disp" / "0.npy", torch.linspace(0, 1, 48).expand(1, 32, 48))
    out = tmp_path / "out"
    build_ebb400_lq(tmp_path / "ebb", out, RealESRGANDegradation(), disparity_dir=tmp_path / "disp", count=1)
    sample = load_benchmark_index(out)[1][0]
    assert sample.extra["mask_rule"] == "pair_agreement_empty_whole_image"
    assert bool((read_image(sample.mask) > 0.5).all())
    assert sample.focus_disparity == pytest.approx(float(torch.linspace(0, 1, 48).expand(32, 48).median()))
