"""Metric registry: weight-free metrics against scikit-image / hand computation, and weights that are never fetched."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from magicbokeh.errors import InvalidInputError, MissingWeightsError, ParameterError
from magicbokeh.evaluation import metrics
from magicbokeh.evaluation.metrics import get_metric, list_metrics, metric_info

REQUIRED = {"psnr", "psnr_y", "ssim", "ssim_y", "lpips", "lpips_vgg", "dists", "fid", "musiq", "maniqa"}
REQUIRED |= {"maniqa-pipal", "clipiqa", "niqe"}


def _pair(seed: int = 0, size: int = 40):
    """A smooth image and a noisy, quantised copy (PNG-like values) so scores are far from trivial."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=size, mode="bilinear")
    noisy = (base + 0.05 * torch.randn(base.shape, generator=g)).clamp(0, 1)
    return (noisy * 255).round() / 255, (base * 255).round() / 255


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).double().numpy()


def _y(array: np.ndarray) -> np.ndarray:
    # BT.601 studio-swing luma, written out independently of the implementation under test.
    return (16.0 + array[..., 0] * 65.481 + array[..., 1] * 128.553 + array[..., 2] * 24.966) / 255.0


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    kwargs = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1.0}
    if a.ndim == 3:
        kwargs["channel_axis"] = -1
    return float(structural_similarity(a, b, **kwargs))


def test_registry_lists_every_paper_metric_with_metadata():
    infos = {info.name: info for info in list_metrics()}
    assert REQUIRED <= set(infos)
    assert infos["psnr"].higher_is_better and infos["psnr"].needs_reference
    assert not infos["lpips"].higher_is_better and not infos["niqe"].higher_is_better
    assert not infos["musiq"].needs_reference and not infos["fid"].per_image
    assert metric_info("maniqa_pipal").name == "maniqa-pipal"
    with pytest.raises(ParameterError, match="unknown metric"):
        metric_info("psnrr")


@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_matches_skimage(crop):
    pred, ref = _pair()
    sl = slice(crop, -crop) if crop else slice(None)
    expected = peak_signal_noise_ratio(_hwc(ref)[sl, sl], _hwc(pred)[sl, sl], data_range=1.0)
    got = get_metric("psnr", crop_border=crop)(pred, ref)
    assert got.shape == (1,) and got.item() == pytest.approx(expected, abs=1e-4)


def test_psnr_y_matches_hand_computed_luma():
    pred, ref = _pair(1)
    expected = peak_signal_noise_ratio(_y(_hwc(ref)), _y(_hwc(pred)), data_range=1.0)
    assert get_metric("psnr_y")(pred, ref).item() == pytest.approx(expected, abs=1e-4)
    # The Y-channel score is not the RGB score: the test can tell the two conventions apart.
    assert abs(get_metric("psnr")(pred, ref).item() - expected) > 1e-2


@pytest.mark.parametrize("crop", [0, 3])
def test_ssim_matches_skimage(crop):
    pred, ref = _pair(2)
    sl = slice(crop, -crop) if crop else slice(None)
    expected = _skimage_ssim(_hwc(pred)[sl, sl], _hwc(ref)[sl, sl])
    assert get_metric("ssim", crop_border=crop)(pred, ref).item() == pytest.approx(expected, abs=1e-4)


def test_ssim_y_matches_skimage_on_luma():
    pred, ref = _pair(3)
    expected = _skimage_ssim(_y(_hwc(pred)), _y(_hwc(ref)))
    assert get_metric("ssim_y")(pred, ref).item() == pytest.approx(expected, abs=1e-4)


def test_batch_scores_are_per_image_and_identity_is_perfect():
    pred, ref = _pair(4)
    batch_pred, batch_ref = torch.cat([pred, ref]), torch.cat([ref, ref])
    scores = get_metric("ssim")(batch_pred, batch_ref)
    assert scores.shape == (2,) and scores[1].item() == pytest.approx(1.0, abs=1e-12) and scores[0] < 0.99
    assert torch.isinf(get_metric("psnr")(ref, ref)).all()


def test_shape_mismatch_and_missing_reference_are_user_errors():
    pred, ref = _pair()
    with pytest.raises(InvalidInputError, match="differ in shape"):
        get_metric("psnr")(pred, ref[..., :-1])
    with pytest.raises(InvalidInputError, match="needs a reference"):
        get_metric("ssim")(pred)


@pytest.fixture
def no_network(monkeypatch):
    """Any socket creation fails the test: a metric must never try the network."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(
    ("name", "filename"),
    [
        ("dists", "DISTS_weights-f5e65c96.pth"),
        ("musiq", "musiq_koniq_ckpt-e95806b9.pth"),
        ("maniqa-pipal", "MANIQA_PIPAL-ae6d356b.pth"),
        ("clipiqa", "RN50.pt"),
        ("lpips", "LPIPS_v0.1_alex-df73285e.pth"),
        ("fid", "pt_inception-2015-12-05-6726825d.pth"),
    ],
)
def test_missing_weights_error_names_file_key_and_source(tmp_path, no_network, name, filename):
    with pytest.raises(MissingWeightsError) as caught:
        get_metric(name, weights_dir=tmp_path, torchvision_dir=tmp_path)
    message = str(caught.value)
    assert filename in message and str(tmp_path) in message
    assert "paths.metric_weights" in message and "https://" in message


def test_missing_torchvision_backbone_names_its_own_key(tmp_path, no_network):
    (tmp_path / "DISTS_weights-f5e65c96.pth").write_bytes(b"")
    with pytest.raises(MissingWeightsError, match=r"vgg16-397923af\.pth.*paths\.torchvision_weights"):
        get_metric("dists", weights_dir=tmp_path, torchvision_dir=tmp_path / "tv")


def test_undeclared_download_inside_pyiqa_is_refused(tmp_path, no_network):
    """Even a file the registry did not declare cannot trigger a download while weights are redirected."""
    from pyiqa.utils.download_util import load_file_from_url

    with metrics._local_weights(tmp_path, tmp_path), pytest.raises(MissingWeightsError, match="never downloaded"):
        load_file_from_url("https://example.org/weights/unknown.pth")
    import pyiqa.utils.download_util as download_util

    assert download_util.DEFAULT_CACHE_DIR != str(tmp_path)  # restored afterwards


def test_niqe_missing_params_error(tmp_path, monkeypatch, no_network):
    monkeypatch.setattr(metrics.sys, "prefix", str(tmp_path / "venv"))
    with pytest.raises(MissingWeightsError, match=r"niqe_pris_params\.npz.*basicsr==1\.4\.2"):
        get_metric("niqe", weights_dir=tmp_path)


def test_niqe_computes_offline_from_basicsr_params(tmp_path, no_network):
    installed = [p for p in metrics.niqe_params_candidates(tmp_path) if p.is_file()]
    # `make install` places them; a missing file here is a broken set-up, not a reason to skip.
    assert installed, "NIQE parameters not installed: run python -m magicbokeh.evaluation.assets"
    shutil.copy(installed[0], tmp_path / metrics.NIQE_PARAMS_FILE)
    g = torch.Generator().manual_seed(0)
    sharp = torch.nn.functional.interpolate(torch.rand(1, 3, 48, 48, generator=g), size=192, mode="bicubic")
    sharp = sharp.clamp(0, 1)
    niqe = get_metric("niqe", weights_dir=tmp_path)
    first, second = niqe(sharp), niqe(sharp)
    assert torch.isfinite(first).all() and first.item() > 0 and torch.equal(first, second)


@pytest.mark.slow
def test_learned_metric_loads_from_the_local_folder_only(tmp_path, no_network):
    """A pyiqa metric finds its file in weights_dir (pyiqa's file name) and scores without touching the network."""
    from pyiqa.archs.musiq_arch import MUSIQ

    torch.manual_seed(0)
    torch.save(MUSIQ(pretrained=False, num_class=1).state_dict(), tmp_path / "musiq_koniq_ckpt-e95806b9.pth")
    musiq = get_metric("musiq", weights_dir=tmp_path)
    scores = musiq(torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1)))
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def _ssim_with_2d_window(images: torch.Tensor, references: torch.Tensor, y_channel: bool) -> torch.Tensor:
    """The direct formulation the separable SSIM replaced: the 11×11 outer-product window as one float64 conv2d."""
    x, y = images.double(), references.double()
    if y_channel:
        x, y = metrics.rgb_to_y(x), metrics.rgb_to_y(y)
    taps = metrics.gaussian_taps()
    channels = x.shape[1]
    window = torch.outer(taps, taps).expand(channels, 1, 11, 11)

    def local_mean(t):
        return torch.nn.functional.conv2d(t, window, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x, var_y = local_mean(x * x) - mu_x**2, local_mean(y * y) - mu_y**2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


@pytest.mark.parametrize("y_channel", [False, True])
def test_separable_ssim_equals_the_2d_window_formulation(y_channel):
    """Same values to rounding on textured, flat (where E[x²] − μ² cancels) and odd-sized images, batched."""
    pred, ref = _pair(5, size=53)
    flat = torch.full_like(ref, 0.73)
    flat_noisy = (flat + 0.004 * torch.randn(flat.shape, generator=torch.Generator().manual_seed(9))).clamp(0, 1)
    images = torch.cat([pred, flat_noisy, ref])[..., :47]
    references = torch.cat([ref, flat, ref])[..., :47]
    expected = _ssim_with_2d_window(images, references, y_channel)
    got = metrics.ssim(images, references, y_channel=y_channel)
    assert got.dtype == torch.float64 and got.shape == (3,)
    assert (got - expected).abs().max().item() < 1e-12
    assert got[2].item() == pytest.approx(1.0, abs=1e-12) and got[0] < 0.99


def test_metric_benchmark_times_the_formulation_it_replaced(tmp_path, monkeypatch, capsys):
    from magicbokeh.evaluation import metric_benchmark
    from magicbokeh.utils.results import RESULTS_DIR_ENV

    pred, ref = _pair(6, size=24)
    for y_channel in (False, True):
        baseline = metric_benchmark.ssim_direct_window(pred, ref, y_channel=y_channel)
        assert torch.equal(baseline, _ssim_with_2d_window(pred, ref, y_channel))
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    assert metric_benchmark.main(["--size", "24", "--repeats", "1", "--name", "speed_test"]) == 0
    document = json.loads((tmp_path / "speed_test.json").read_text())
    assert document["figures"]["ssim_y"]["max_abs_difference"] < 1e-12
    assert [row[0] for row in document["tables"]["ssim"]["rows"]] == ["ssim (RGB)", "ssim_y"]
    assert "speed-up" in capsys.readouterr().out
