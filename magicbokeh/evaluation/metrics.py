"""Metric registry: ``get_metric(name)`` / ``list_metrics()``, each metric with its metadata.

Weight-free metrics (PSNR, SSIM and their Y-channel variants) are implemented here in float64 so the numbers do not
depend on a third-party version (REFERENCE "Metric reproducibility": crop and colour conventions move PSNR/SSIM).
Learned metrics are pyiqa's (the paper's and OSEDiff's numbers come from pyiqa), but their weights are read from a
local folder only: every file a metric needs is declared below and checked *before* pyiqa is called, and pyiqa's
download hooks are replaced for the duration of the build so nothing ever reaches the network.

Input contract of every metric: ``images`` (and ``references``) ``B×3×H×W`` float in [0, 1]; a per-image metric
returns a float64 tensor of ``B`` scores. FID is a set metric: ``score_folders(pred_dir, ref_dir) -> float``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from magicbokeh.errors import InvalidInputError, MissingWeightsError, ParameterError, missing_weights
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

PYIQA_WEIGHTS_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
TORCHVISION_URL = "https://download.pytorch.org/models/"
NIQE_PARAMS_FILE = "niqe_pris_params.npz"
NIQE_SOURCE = (
    "the basicsr==1.4.2 sdist on PyPI (basicsr/metrics/niqe_pris_params.npz); "
    "run `python -m magicbokeh.evaluation.assets --dest <metric_weights>`"
)
METRIC_WEIGHTS_KEY = "paths.metric_weights"
TORCHVISION_WEIGHTS_KEY = "paths.torchvision_weights"


@dataclass(frozen=True)
class WeightFile:
    """A pretrained file a metric reads: its path relative to a weights folder, and where to obtain it."""

    relative_path: str
    source: str
    config_key: str = METRIC_WEIGHTS_KEY


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is: direction, whether it needs a reference, and how it is computed."""

    name: str
    higher_is_better: bool
    needs_reference: bool
    description: str
    per_image: bool = True  # False: a set metric (FID) computed from two folders
    weights: tuple[WeightFile, ...] = ()
    options: dict = field(default_factory=dict)


def _hub(name: str) -> WeightFile:
    return WeightFile(name, PYIQA_WEIGHTS_URL + name)


def _torchvision(name: str) -> WeightFile:
    return WeightFile(name, TORCHVISION_URL + name, TORCHVISION_WEIGHTS_KEY)


_ALEXNET = _torchvision("alexnet-owt-7be5be79.pth")
_VGG16 = _torchvision("vgg16-397923af.pth")

_REGISTRY: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo("psnr", True, True, "PSNR on RGB, peak 1.0", options={"y_channel": False}),
        MetricInfo("psnr_y", True, True, "PSNR on Y of YCbCr (BT.601, BasicSR/pyiqa)", options={"y_channel": True}),
        MetricInfo("ssim", True, True, "SSIM (Gaussian 11x11, sigma 1.5) on RGB", options={"y_channel": False}),
        MetricInfo("ssim_y", True, True, "SSIM on Y of YCbCr (BT.601)", options={"y_channel": True}),
        MetricInfo(
            "lpips",
            False,
            True,
            "LPIPS v0.1, AlexNet (pyiqa 'lpips')",
            weights=(_hub("LPIPS_v0.1_alex-df73285e.pth"), _ALEXNET),
            options={"pyiqa": "lpips"},
        ),
        MetricInfo(
            "lpips_vgg",
            False,
            True,
            "LPIPS v0.1, VGG16 (pyiqa 'lpips-vgg')",
            weights=(_hub("LPIPS_v0.1_vgg-a78928a0.pth"), _VGG16),
            options={"pyiqa": "lpips-vgg"},
        ),
        MetricInfo(
            "dists",
            False,
            True,
            "DISTS (pyiqa)",
            weights=(_hub("DISTS_weights-f5e65c96.pth"), _VGG16),
            options={"pyiqa": "dists"},
        ),
        MetricInfo(
            "musiq",
            True,
            False,
            "MUSIQ trained on KonIQ-10k (pyiqa 'musiq')",
            weights=(_hub("musiq_koniq_ckpt-e95806b9.pth"),),
            options={"pyiqa": "musiq"},
        ),
        MetricInfo(
            "maniqa",
            True,
            False,
            "MANIQA trained on KonIQ-10k (pyiqa 'maniqa')",
            weights=(_hub("ckpt_koniq10k.pt"),),
            options={"pyiqa": "maniqa"},
        ),
        MetricInfo(
            "maniqa-pipal",
            True,
            False,
            "MANIQA trained on PIPAL, the variant OSEDiff reports (pyiqa 'maniqa-pipal')",
            weights=(_hub("MANIQA_PIPAL-ae6d356b.pth"),),
            options={"pyiqa": "maniqa-pipal"},
        ),
        MetricInfo(
            "clipiqa",
            True,
            False,
            "CLIP-IQA with the CLIP RN50 backbone (pyiqa 'clipiqa')",
            weights=(
                WeightFile(
                    "clip/RN50.pt",
                    "https://openaipublic.azureedge.net/clip/models/"
                    "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
                ),
            ),
            options={"pyiqa": "clipiqa"},
        ),
        MetricInfo(
            "niqe",
            False,
            False,
            "NIQE with MATLAB's pristine-image parameters (pyiqa's implementation)",
            weights=(WeightFile(NIQE_PARAMS_FILE, NIQE_SOURCE),),
        ),
        MetricInfo(
            "fid",
            False,
            True,
            "clean-FID between the prediction folder and the target folder (pyiqa 'fid')",
            per_image=False,
            weights=(_hub("pt_inception-2015-12-05-6726825d.pth"),),
            options={"pyiqa": "fid"},
        ),
    )
}
ALIASES = {"lpips_alex": "lpips", "lpips-vgg": "lpips_vgg", "maniqa_pipal": "maniqa-pipal"}


def list_metrics() -> list[MetricInfo]:
    """Every registered metric with its metadata, in registry order."""
    return list(_REGISTRY.values())


def metric_info(name: str) -> MetricInfo:
    """Metadata of one metric (accepts the aliases in ``ALIASES``)."""
    key = ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ParameterError(f"unknown metric '{name}'; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def default_metric_weights_dir() -> Path:
    """pyiqa's own cache folder (``<torch hub dir>/pyiqa``), the default when no folder is configured."""
    return Path(torch.hub.get_dir()) / "pyiqa"


def default_torchvision_weights_dir() -> Path:
    """torchvision's cache folder (``<torch hub dir>/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def niqe_params_candidates(weights_dir: Path) -> list[Path]:
    """Where NIQE's parameters are looked for: the metric-weights folder, then the venv's share folder."""
    return [weights_dir / NIQE_PARAMS_FILE, Path(sys.prefix) / "share" / "magicbokeh" / NIQE_PARAMS_FILE]


# --- weight-free metrics -----------------------------------------------------------------------------------------


def _check_pair(images: torch.Tensor, references: torch.Tensor | None) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise InvalidInputError(f"metric input must be B×3×H×W, got shape {tuple(images.shape)}")
    if references is not None and references.shape != images.shape:
        raise InvalidInputError(
            f"prediction {tuple(images.shape)} and reference {tuple(references.shape)} differ in shape"
        )


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """Luma of ITU-R BT.601 YCbCr in [0, 1] from RGB in [0, 1]: Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255.

    The "studio swing" Y in [16/255, 235/255] that MATLAB's ``rgb2ycbcr``, BasicSR and pyiqa (color_space='ycbcr')
    use for SR benchmarks; not rounded to integers (BasicSR does not round either).
    """
    weights = images.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return (16.0 + (images * weights).sum(dim=1, keepdim=True)) / 255.0


def _prepare(images: torch.Tensor, y_channel: bool, crop_border: int) -> torch.Tensor:
    images = images.to(torch.float64)
    if crop_border:
        images = images[..., crop_border:-crop_border, crop_border:-crop_border]
    return rgb_to_y(images) if y_channel else images


def psnr(images: torch.Tensor, references: torch.Tensor, *, y_channel: bool = False, crop_border: int = 0):
    """PSNR = 10·log10(1 / MSE) with peak 1.0 (images in [0, 1]), per image; +inf for identical images."""
    _check_pair(images, references)
    x, y = _prepare(images, y_channel, crop_border), _prepare(references, y_channel, crop_border)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(1.0 / mse)


SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def gaussian_taps(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """The normalised 1-D Gaussian ``g`` (float64) whose outer product ``g gᵀ`` is SSIM's 11×11 window."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(coords**2) / (2 * sigma**2))
    return taps / taps.sum()


def _gaussian_mean_valid(maps: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Gaussian-weighted local means of ``…×H×W`` maps over the valid region (no padding): ``…×(H−10)×(W−10)``.

    The window is separable, so filtering the rows and then the columns with the 1-D taps ``g`` equals the 2-D
    window ``g gᵀ`` (11 + 11 products per pixel instead of 121). Each pass is 11 shifted, weighted in-place sums
    rather than a grouped ``conv2d``: torch has no fast depthwise float64 convolution, and the maps of one channel
    stay in cache across the 22 sums. `python scripts/benchmark.py metrics` times the whole metric against the direct
    window (results/metric_speed.json).
    """
    height, width = maps.shape[-2:]
    out_h, out_w = height - SSIM_WINDOW + 1, width - SSIM_WINDOW + 1
    rows = maps[..., :out_w] * taps[0]
    for k in range(1, SSIM_WINDOW):
        rows.add_(maps[..., k : k + out_w], alpha=taps[k])
    out = rows[..., :out_h, :] * taps[0]
    for k in range(1, SSIM_WINDOW):
        out.add_(rows[..., k : k + out_h, :], alpha=taps[k])
    return out


def _ssim_channel(x: torch.Tensor, y: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Mean SSIM of one pair of ``H×W`` float64 maps (eq. 13 of Wang et al. 2004 at every valid pixel)."""
    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y, xx, yy, xy = _gaussian_mean_valid(torch.stack((x, y, x * x, y * y, x * y)), taps)
    mu_xy = mu_x * mu_y
    mu_x.square_()
    mu_y.square_()
    # σx² + σy² = E[x²] − μx² + E[y²] − μy², and σxy = E[xy] − μxμy, in float64: these differences of close numbers
    # are where lower precision would lose the digits SSIM's stabilisers C1, C2 (1e-4, 9e-4) compare against.
    variances = xx.sub_(mu_x).add_(yy).sub_(mu_y)
    covariance = xy.sub_(mu_xy)
    numerator = mu_xy.mul_(2).add_(c1).mul_(covariance.mul_(2).add_(c2))
    denominator = mu_x.add_(mu_y).add_(c1).mul_(variances.add_(c2))
    return numerator.div_(denominator).mean()


def ssim(images: torch.Tensor, references: torch.Tensor, *, y_channel: bool = False, crop_border: int = 0):
    """SSIM of Wang et al. 2004, eq. (13), per channel then averaged; the MATLAB/BasicSR protocol.

    Local statistics under an 11×11 Gaussian window (σ = 1.5) over the *valid* region only, population (not sample)
    covariances, C1 = (0.01·L)², C2 = (0.03·L)² with L = 1. Computed in float64, one channel at a time with the
    separable window, on the inputs' device (the evaluation moves them to the metric device); equal to the direct
    11×11 convolution to rounding.
    """
    _check_pair(images, references)
    x, y = _prepare(images, y_channel, crop_border), _prepare(references, y_channel, crop_border)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise InvalidInputError(f"SSIM needs images of at least 11×11 pixels, got {tuple(x.shape[-2:])}")
    taps = gaussian_taps().tolist()
    # Every channel has the same number of valid pixels, so the image's mean is the mean of the channels' means.
    return torch.stack(
        [torch.stack([_ssim_channel(xc, yc, taps) for xc, yc in zip(xb, yb)]).mean() for xb, yb in zip(x, y)]
    )


# --- local-only weights for pyiqa ------------------------------------------------------------------------------


def _offline_download(url: str, *args, **kwargs):
    """Stands in for every download function while a pyiqa metric is built: weights are local only."""
    raise MissingWeightsError(
        f"a metric tried to download '{url}'; weights are never downloaded at run time. Place the file in "
        f"'{METRIC_WEIGHTS_KEY}' (or '{TORCHVISION_WEIGHTS_KEY}' for torchvision backbones)."
    )


@contextlib.contextmanager
def _local_weights(weights_dir: Path, torchvision_dir: Path) -> Iterator[None]:
    """Point pyiqa's and torchvision's loaders at local folders and make any download attempt an error.

    pyiqa resolves file names through ``download_util.load_file_from_url`` (reading the module-level
    ``DEFAULT_CACHE_DIR`` at call time), CLIP through ``clip_model.get_dir()``, and torchvision backbones through
    ``torchvision.models._api.load_state_dict_from_url``; MANIQA asks timm for ImageNet ViT weights although its own
    checkpoint (loaded strictly afterwards) holds every ViT weight, so the timm call is made without them.
    """
    import pyiqa.archs.clip_model as clip_model
    import pyiqa.utils.download_util as download_util
    import timm
    import torchvision.models._api as tv_api

    def local_torchvision(url: str, *args, **kwargs):
        path = torchvision_dir / os.path.basename(url)
        if not path.is_file():
            raise missing_weights(str(path), TORCHVISION_WEIGHTS_KEY, url)
        return torch.load(path, map_location="cpu", weights_only=True)

    original_create = timm.create_model

    def create_without_download(*args, **kwargs):
        kwargs["pretrained"] = False
        return original_create(*args, **kwargs)

    saved = {
        (download_util, "DEFAULT_CACHE_DIR"): download_util.DEFAULT_CACHE_DIR,
        (download_util, "download_url_to_file"): download_util.download_url_to_file,
        (clip_model, "get_dir"): clip_model.get_dir,
        (tv_api, "load_state_dict_from_url"): tv_api.load_state_dict_from_url,
        (timm, "create_model"): timm.create_model,
        (torch.hub, "download_url_to_file"): torch.hub.download_url_to_file,
    }
    replacements = {
        (download_util, "DEFAULT_CACHE_DIR"): str(weights_dir),
        (download_util, "download_url_to_file"): _offline_download,
        (clip_model, "get_dir"): lambda: str(weights_dir),
        (tv_api, "load_state_dict_from_url"): local_torchvision,
        (timm, "create_model"): create_without_download,
        (torch.hub, "download_url_to_file"): _offline_download,
    }
    try:
        for (module, attr), value in replacements.items():
            setattr(module, attr, value)
        yield
    finally:
        for (module, attr), value in saved.items():
            setattr(module, attr, value)


def check_weights(info: MetricInfo, weights_dir: Path, torchvision_dir: Path) -> None:
    """Raise :class:`MissingWeightsError` naming the first missing file of ``info`` (instant; no network)."""
    if info.name == "niqe":
        candidates = niqe_params_candidates(weights_dir)
        if not any(path.is_file() for path in candidates):
            raise missing_weights(" or ".join(map(str, candidates)), METRIC_WEIGHTS_KEY, NIQE_SOURCE)
        return
    for weight in info.weights:
        folder = torchvision_dir if weight.config_key == TORCHVISION_WEIGHTS_KEY else weights_dir
        path = folder / weight.relative_path
        if not path.is_file():
            raise missing_weights(str(path), weight.config_key, weight.source)


class Metric:
    """A ready-to-call metric: ``metric(images, references=None) -> B`` scores (float64, CPU)."""

    def __init__(self, info: MetricInfo, fn, module: torch.nn.Module | None = None):
        self.info = info
        self._fn = fn
        self.module = module

    @property
    def name(self) -> str:
        return self.info.name

    def __call__(self, images: torch.Tensor, references: torch.Tensor | None = None) -> torch.Tensor:
        if not self.info.per_image:
            raise ParameterError(f"'{self.name}' is a set metric: call score_folders(pred_dir, ref_dir)")
        if self.info.needs_reference and references is None:
            raise InvalidInputError(f"metric '{self.name}' needs a reference image")
        _check_pair(images, references if self.info.needs_reference else None)
        with torch.no_grad():
            scores = self._fn(images, references) if self.info.needs_reference else self._fn(images)
        return scores.detach().reshape(images.shape[0], -1)[:, 0].to("cpu", torch.float64)

    def score_folders(self, pred_dir: str | os.PathLike, ref_dir: str | os.PathLike) -> float:
        """Set metrics (FID): one number for a folder of predictions against a folder of references."""
        if self.info.per_image:
            raise ParameterError(f"'{self.name}' is a per-image metric: call it on image tensors")
        with torch.no_grad():
            return float(self._fn(str(pred_dir), str(ref_dir)))


def _niqe_module(weights_dir: Path, device: torch.device, crop_border: int) -> torch.nn.Module:
    """pyiqa's NIQE fed MATLAB's parameters from BasicSR's npz (pyiqa reads a .mat, so one is made in memory)."""
    import scipy.io
    from pyiqa.archs.niqe_arch import NIQE

    path = next(p for p in niqe_params_candidates(weights_dir) if p.is_file())
    with np.load(path) as params:
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, {"mu_prisparam": params["mu_pris_param"], "cov_prisparam": params["cov_pris_param"]})
    buffer.seek(0)
    # pyiqa's 'niqe' defaults: Y of YIQ, values in [0, 255] (MATLAB's protocol).
    return NIQE(test_y_channel=True, color_space="yiq", crop_border=crop_border, pretrained_model_path=buffer).to(
        device
    )


def get_metric(
    name: str,
    *,
    weights_dir: str | os.PathLike | None = None,
    torchvision_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    crop_border: int = 0,
) -> Metric:
    """Build a metric by name (see ``list_metrics()``).

    ``weights_dir`` holds learned-metric weights in pyiqa's flat cache layout (default pyiqa's cache folder);
    ``torchvision_dir`` the ImageNet backbones (default torchvision's cache). A missing file raises
    :class:`MissingWeightsError` naming it, its config key and its source before anything is built.
    ``crop_border`` (pixels removed on each side) applies to PSNR/SSIM/NIQE, the SR convention.
    """
    info = metric_info(name)
    if crop_border < 0:
        raise ParameterError(f"crop_border must be >= 0, got {crop_border}")
    device = torch.device(device)
    if info.name in ("psnr", "psnr_y", "ssim", "ssim_y"):
        formula = psnr if info.name.startswith("psnr") else ssim
        y = info.options["y_channel"]
        return Metric(info, lambda x, ref: formula(x.to(device), ref.to(device), y_channel=y, crop_border=crop_border))

    weights_dir = Path(weights_dir) if weights_dir is not None else default_metric_weights_dir()
    torchvision_dir = Path(torchvision_dir) if torchvision_dir is not None else default_torchvision_weights_dir()
    check_weights(info, weights_dir, torchvision_dir)
    with _local_weights(weights_dir, torchvision_dir):
        if info.name == "niqe":
            module = _niqe_module(weights_dir, device, crop_border).eval()
            return Metric(info, lambda x: module(x.to(device, torch.float32)), module)
        import pyiqa

        module = pyiqa.create_metric(info.options["pyiqa"], device=device, as_loss=False).eval()
    if info.per_image:
        if info.needs_reference:
            return Metric(info, lambda x, ref: module(x.to(device), ref.to(device)), module)
        return Metric(info, lambda x: module(x.to(device)), module)
    return Metric(info, lambda pred_dir, ref_dir: module(pred_dir, ref_dir, mode="clean"), module)
