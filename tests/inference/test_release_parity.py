"""``preset=release`` gives the official release's images: its inference loop, re-stated here from its documented
steps, against our pipeline, both around the same small network imported from the release's ``lora.pkl`` layout.

The release's steps (REFERENCE §1.2, §1.7; the release's code is not copied, it has no licence):

* the disparity is stored as 8-bit levels (``uint8`` of ``255·d``, truncated) and read back as ``level/255``;
* focus: the lower median (``torch.median``) of the levels under every nonzero pixel of an 8-bit subject mask, or
  the level of the clicked pixel (coordinates truncated); ``/255``;
* ``defocus = |d − d_f|·K/32`` with K = 32, at the input size (no upsampling);
* 512-px tiles every 256 px, plus tiles flush with the bottom/right edge when a side is not a multiple of 256; the
  network sees ``2x − 1`` images and defocus and returns [−1, 1];
* each tile is weighted by ones with ``linspace(0, 1, 256)`` on a side that touches another tile (the mirror image
  on the far side), the weighted sum divided by the summed weights;
* ``0.5·out + 0.5`` is converted to 8 bits by truncation, AdaIN (per channel, unbiased variance + 1e-5) matches it
  to the 8-bit input in float32, the result is clamped and truncated to 8 bits again;
* its depth step: the RGB photo /255 (float64), bicubically resized (OpenCV) so the short side is 518 and both sides
  are multiples of 14, not clamped, ImageNet-normalised; DINOv2's position table resized by the scale factor
  ``(n + 0.1)/N``; the depth bilinearly resized back (corners aligned), min-max normalised with ``+1e-8``.

The network is small (512-px tiles in about a second on one core); identical tiles are answered from a cache keyed
by their exact bytes, so a tile the release loop and the pipeline both feed is computed once. Equal means within one
8-bit level (float rounding can flip a truncation); each "before" check shows the test sees that step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from magicbokeh.depth.model import build_depth_model
from magicbokeh.inference.batch import RenderOptions, render_inputs
from magicbokeh.inference.pipeline import MagicBokehPipeline
from magicbokeh.inference.presets import PRESETS
from magicbokeh.models import build_model
from magicbokeh.models.checkpoint import import_official_checkpoint
from tests.models.conftest import randomize
from tests.models.official_format import write_official_checkpoint

from .test_render_cli import ROOT

pytestmark = pytest.mark.slow  # ~50 tile passes of a 512-px network: about a minute on one core

RELEASE = PRESETS["release"]
TILE, STRIDE = 512, 256

# A network with the release's structure at toy width whose 512-px tiles are cheap: ×8 VAE without mid-block
# attention, UNet attention only at the coarser level (FAMA there), one layer per block.
PARITY_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [8, 16], "layers_per_block": 1, "attention_head_dim": 2, "cross_attention_dim": 16,
    "norm_num_groups": 4, "use_linear_projection": True,
}  # fmt: skip
PARITY_VAE = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [4, 4, 4, 4], "layers_per_block": 1,
    "latent_channels": 4, "norm_num_groups": 2, "sample_size": 64, "mid_block_add_attention": False,
}  # fmt: skip


class CachedNetwork(torch.nn.Module):
    """The network, answering a tile it has already seen (same bytes) from a cache: it is deterministic."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.stride = model.stride
        self.cache: dict[tuple, torch.Tensor] = {}
        self.passes = 0

    def forward(self, images: torch.Tensor, defocus: torch.Tensor) -> torch.Tensor:
        key = tuple(
            (tuple(t.shape), str(t.dtype), hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest())
            for t in (images, defocus)
        )
        if key not in self.cache:
            self.passes += 1
            self.cache[key] = self.model(images, defocus)
        return self.cache[key].clone()


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    """A random network with every trainable group non-zero, saved as the release's lora.pkl and imported."""
    folder = tmp_path_factory.mktemp("official")
    arguments = {
        "unet_config": PARITY_UNET, "vae_config": PARITY_VAE, "unet_lora_rank": 2, "vae_lora_rank": 2,
        "bokeh_lora_rank": 2, "unet_lora_alpha": 8.0, "vae_lora_alpha": 8.0, "bokeh_lora_alpha": 1.0,
    }  # fmt: skip
    torch.manual_seed(0)
    original = build_model(name="parity", **arguments).eval()
    randomize(original.trainable_parameters("joint"), std=0.1)
    with pytest.MonkeyPatch.context() as monkeypatch:
        write_official_checkpoint(original, folder / "lora.pkl", monkeypatch)
    torch.manual_seed(0)
    target = build_model(name="parity", **arguments).eval()
    imported = import_official_checkpoint(folder / "lora.pkl", model=target).eval()
    return CachedNetwork(imported).eval()


def _scene(width: int, height: int) -> dict[str, np.ndarray]:
    """A shipped CC0 photo at ``width×height`` (8-bit), a float disparity (a floor rising towards the bottom and a
    near subject) and a feathered 8-bit subject mask."""
    photo = np.asarray(Image.open(ROOT / "data" / "samples" / "photos" / "chelsea.jpg").convert("RGB"))
    image = cv2.resize(photo, (width, height), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys, xs = ys / (height - 1), xs / (width - 1)
    subject = np.exp(-(((xs - 0.45) / 0.16) ** 2 + ((ys - 0.55) / 0.22) ** 2))
    disparity = np.clip(0.15 + 0.45 * ys + 0.35 * subject + 0.02 * np.sin(40 * xs), 0.0, 1.0).astype(np.float32)
    mask = np.clip((subject - 0.25) * 400.0, 0.0, 255.0).astype(np.uint8)  # hard core, soft 1…254 rim
    return {"image": image, "disparity": disparity, "mask": mask}


# ------------------------------------------------------------------------------ the release's loop, re-stated
def release_focus_from_mask(levels: np.ndarray, mask: np.ndarray) -> float:
    return torch.from_numpy(levels[mask > 0].astype(np.float32)).median().item() / 255.0


def _release_ramp(start: int, length: int) -> torch.Tensor:
    weights = torch.ones(TILE)
    if start < length - TILE:
        weights[-STRIDE:] = torch.linspace(1, 0, STRIDE)
    if start > 0:
        weights[:STRIDE] = torch.linspace(0, 1, STRIDE)
    return weights


def release_inference(
    network, image: np.ndarray, levels: np.ndarray, focus: float, K: float = 32
) -> tuple[np.ndarray, np.ndarray]:
    """8-bit input photo, 8-bit disparity levels, focus disparity → the release's 8-bit output, and the stitched
    output in levels (``255·(0.5·out + 0.5)``) before its first truncation."""
    lq = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    depth = torch.from_numpy(levels)[None, None].float() / 255.0
    defocus = (depth - focus).abs() * (K / 32)
    height, width = image.shape[:2]
    rows = list(range(0, height - TILE + 1, STRIDE)) + ([height - TILE] if height % STRIDE else [])
    cols = list(range(0, width - TILE + 1, STRIDE)) + ([width - TILE] if width % STRIDE else [])
    output = torch.zeros(1, 3, height, width)
    weights = torch.zeros(1, 3, height, width)
    with torch.no_grad():
        for top in rows:
            for left in cols:
                window = (..., slice(top, top + TILE), slice(left, left + TILE))
                # The release feeds 2x − 1 and gets [−1, 1] back; our model applies 2x − 1 itself and returns [0, 1].
                tile = network(lq[window], defocus[window]) * 2 - 1
                weight = torch.outer(_release_ramp(top, height), _release_ramp(left, width))
                output[window] += tile * weight
                weights[window] += weight
    covered = weights > 0
    output[covered] /= weights[covered]
    stitched = (output[0] * 0.5 + 0.5).mul(255)
    first = stitched.to(torch.uint8)  # ToPILImage of a float tensor: truncation
    content = first.float()[None] / 255.0
    style = lq

    def mean_std(features):
        flat = features.reshape(1, 3, -1)
        return flat.mean(2).reshape(1, 3, 1, 1), (flat.var(dim=2) + 1e-5).sqrt().reshape(1, 3, 1, 1)

    content_mean, content_std = mean_std(content)
    style_mean, style_std = mean_std(style)
    fixed = ((content - content_mean) / content_std * style_std + style_mean).clamp_(0.0, 1.0)
    final = fixed[0].mul(255).to(torch.uint8).permute(1, 2, 0).numpy()
    return final, stitched.permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------------- our pipeline
def _files(tmp_path, scene, mask=None):
    cv2.imwrite(str(tmp_path / "photo.png"), scene["image"][..., ::-1])
    np.save(tmp_path / "photo.npy", scene["disparity"])
    cv2.imwrite(str(tmp_path / "mask.png"), scene["mask"] if mask is None else mask)


def _ours(network, tmp_path, scene, preset=RELEASE, K=None, mask=None) -> np.ndarray:
    """Our CLI path (render_inputs: files in, 8-bit PNG out) with ``preset``."""
    _files(tmp_path, scene, mask)
    pipeline = MagicBokehPipeline(network, preset=preset, progress=False)
    (written,) = render_inputs(
        pipeline, tmp_path / "photo.png", tmp_path / "out", RenderOptions(K=K), disparity=tmp_path / "photo.npy",
        mask=tmp_path / "mask.png",
    )  # fmt: skip
    return cv2.imread(str(written))[..., ::-1]


TIE = 1e-4
"""A stitched value this close to an 8-bit level is a tie: float rounding (our blend in [0, 1], the release's in
[−1, 1]) decides which side its truncation falls, and AdaIN's gain (> 1 here) can turn that level into two."""


def _difference(ours: np.ndarray, release: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    final, stitched = release
    levels = np.abs(ours.astype(np.int16) - final.astype(np.int16))
    ties = np.abs(stitched - np.round(stitched)) < TIE
    return {
        "max": int(levels.max()),
        "mean": float(levels.mean()),
        "differing": float((levels > 0).mean()),
        "max_off_ties": int(np.where(ties, 0, levels).max()),
    }


def _release_reference(network, scene) -> tuple[np.ndarray, np.ndarray]:
    levels = (scene["disparity"] * 255).astype(np.uint8)
    return release_inference(network, scene["image"], levels, release_focus_from_mask(levels, scene["mask"]))


@pytest.mark.parametrize(("width", "height"), [(768, 640), (1562, 1024)], ids=["768x640-4-tiles", "1562x1024"])
def test_release_preset_gives_the_release_output(network, tmp_path, width, height):
    scene = _scene(width, height)
    release = _release_reference(network, scene)
    ours = _ours(network, tmp_path, scene)
    difference = _difference(ours, release)
    print(f"preset=release vs the release, {width}×{height}: {difference}")
    assert ours.shape == release[0].shape == (height, width, 3)
    # Within one level everywhere but at truncation ties, within two there; a few values in 10⁵ differ at all.
    assert difference["max_off_ties"] <= 1 and difference["max"] <= 2 and difference["differing"] < 1e-4


@pytest.fixture(scope="module")
def small_scene(network):
    """768×640 (4 tiles) and the release's output for it."""
    scene = _scene(768, 640)
    return scene, _release_reference(network, scene)


@pytest.mark.parametrize(
    ("step", "change"),
    [
        ("mask threshold (> 0.5)", {"mask": "half"}),
        ("defaults (K 16)", {"K": 16}),
        ("disparity in float", {"preset": dataclasses.replace(RELEASE, disparity_8bit=False)}),
        ("tile blending (ramps on every side)", {"preset": dataclasses.replace(RELEASE, blend="ramp")}),
        ("colour fix in float", {"preset": dataclasses.replace(RELEASE, output_8bit=False)}),
    ],
)
def test_each_step_of_the_release_is_needed(network, small_scene, tmp_path, step, change):
    """Our own choice for one step, everything else the release's: the output moves by more than one level."""
    scene, release = small_scene
    mask = np.where(scene["mask"] >= 128, scene["mask"], 0).astype(np.uint8) if change.get("mask") else None
    before = _ours(network, tmp_path, scene, preset=change.get("preset", RELEASE), K=change.get("K"), mask=mask)
    difference = _difference(before, release)
    print(f"before ({step}) vs the release, 768×640: {difference}")
    assert difference["max"] > 1


# --------------------------------------------------------------------------- depth and click, as the release demo
def _release_position_embeddings(embeddings, pixels, height, width):
    """DINOv2's original resize of the position table: a scale factor (n + 0.1)/N, bicubic, float32."""
    table = embeddings.position_embeddings
    grid = math.isqrt(table.shape[1] - 1)
    if pixels.shape[1] - 1 == grid * grid and height == width:
        return table
    rows, cols = height // 14 + 0.1, width // 14 + 0.1
    patch = table[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2).float()
    patch = F.interpolate(patch, scale_factor=(rows / grid, cols / grid), mode="bicubic", align_corners=False)
    return torch.cat([table[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])], dim=1)


def release_depth_levels(depth_network, image: np.ndarray) -> np.ndarray:
    """The release's depth step on an 8-bit RGB photo → 8-bit disparity levels."""
    height, width = image.shape[:2]
    scale = 518 / min(height, width)

    def side(length):
        return max(round(length * scale / 14), math.ceil(518 / 14)) * 14

    resized = cv2.resize(image / 255.0, (side(width), side(height)), interpolation=cv2.INTER_CUBIC)
    normalised = (resized - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    pixels = torch.from_numpy(normalised.transpose(2, 0, 1).astype(np.float32))[None]
    embeddings = depth_network.network.backbone.embeddings
    with pytest.MonkeyPatch.context() as monkeypatch, torch.no_grad():
        monkeypatch.setattr(
            embeddings, "interpolate_pos_encoding", lambda x, h, w: _release_position_embeddings(embeddings, x, h, w)
        )
        network = depth_network.network
        features = network.backbone(pixels).feature_maps
        patch_h, patch_w = pixels.shape[-2] // 14, pixels.shape[-1] // 14
        depth = network.head(network.neck(list(features), patch_h, patch_w), patch_h, patch_w)[:, None]
    depth = F.interpolate(depth, (height, width), mode="bilinear", align_corners=True)[0, 0].numpy()
    depth = (depth - depth.min()) / (depth.max() - depth.min() + 1e-8)
    return (depth * 255).astype(np.uint8)


def test_depth_and_click_give_the_release_demo_output(network, small_scene, tmp_path):
    """Disparity from the depth network and focus by click, as the release's demo; then each of our choices."""
    scene, _ = small_scene
    torch.manual_seed(0)
    depth_model = build_depth_model("tiny", None)
    click = (300.7, 350.2)
    levels = release_depth_levels(depth_model, scene["image"])
    release = release_inference(network, scene["image"], levels, levels[int(click[1]), int(click[0])] / 255.0)

    image = torch.from_numpy(scene["image"]).permute(2, 0, 1).float() / 255.0
    results = {}
    for name, preprocessing, preset in [
        ("after", "release", RELEASE),
        ("before: our depth preprocessing", "default", RELEASE),
        ("before: our click rule", "release", dataclasses.replace(RELEASE, focus_rules="robust")),
    ]:
        depth_model.set_preprocessing(preprocessing)
        pipeline = MagicBokehPipeline(network, depth_model, preset=preset, progress=False)
        out = pipeline.run(image, focus=click)
        ours = out.image[0].mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        ours_levels = out.disparity[0, 0].mul(255).round().to(torch.uint8).numpy()
        results[name] = {
            **_difference(ours, release),
            "disparity_levels_differing": float((ours_levels != levels).mean()),
            "focus": round(out.focus_disparity * 255),
        }
        print(f"{name} vs the release demo, 768×640: {results[name]}")
    after = results["after"]
    assert after["max_off_ties"] <= 1 and after["max"] <= 2 and after["disparity_levels_differing"] < 0.01
    assert results["after"]["focus"] == levels[int(click[1]), int(click[0])]
    assert results["before: our depth preprocessing"]["disparity_levels_differing"] > 0.01
    assert results["before: our click rule"]["focus"] != results["after"]["focus"]
