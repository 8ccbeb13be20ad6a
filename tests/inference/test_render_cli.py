"""scripts/render.py end to end (subprocess, exit codes) with a tiny random-weight checkpoint and real photos."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from skimage import data, transform

from magicbokeh.data.io import read_image
from magicbokeh.depth import build_depth_model
from magicbokeh.utils.config import compose_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # every test starts Python + torch + the network in a subprocess


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny MagicBokeh checkpoint and a tiny depth network saved to disk, as a user would have them."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    instantiate(compose_config("train", ["model=tiny"]).model).save_pretrained(folder / "ckpt")
    build_depth_model("tiny", None, input_size=None).save(folder / "depth")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    resize = lambda img, shape: transform.resize(img, shape, anti_aliasing=True)  # noqa: E731
    cv2.imwrite(str(folder / "gray.png"), (resize(data.camera(), (40, 40)) * 255).astype(np.uint8))
    coffee = (resize(data.coffee(), (36, 52)) * 65535).astype(np.uint16)
    cv2.imwrite(str(folder / "deep16.png"), coffee[..., ::-1])
    cv2.imwrite(str(folder / "small.jpg"), (resize(data.astronaut(), (12, 20)) * 255).astype(np.uint8)[..., ::-1])
    cv2.imwrite(str(folder / "odd.png"), (resize(data.chelsea(), (37, 71)) * 255).astype(np.uint8)[..., ::-1])
    return folder


def _run(script, *arguments, cwd=ROOT):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout, from any cwd
    command = [sys.executable, str(ROOT / "scripts" / script), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=cwd, check=False)


def _render(tmp_path, weights, *overrides):
    return _run(
        "render.py", f"ckpt={weights / 'ckpt'}", "depth_model.size=tiny", f"depth_model.weights={weights / 'depth'}",
        "depth_model.input_size=null", "tile.size=64", "tile.stride=32", *overrides,
    )  # fmt: skip


SAMPLES = ROOT / "data" / "samples" / "synthetic"


def _classical(cwd, *overrides):
    """The README's weight-free example: a shipped synthetic scene with its disparity, the optics renderer."""
    return _run(
        "render.py", "mode=classical", f"input={SAMPLES / 'image' / '000000.png'}",
        f"disparity={SAMPLES / 'disparity' / '000000.npy'}", "scale=1", "K=24", *overrides, cwd=cwd,
    )  # fmt: skip


def test_output_means_nothing_else_is_created(tmp_path):
    result = _classical(tmp_path, "output=out", f"focus.mask={SAMPLES / 'mask' / '000000.png'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no outputs/render/<timestamp>/, no .hydra/, no log
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["000000.png"]


def test_a_failed_run_leaves_no_folder(tmp_path):
    cv2.imwrite(str(tmp_path / "small_mask.png"), np.full((10, 10), 255, np.uint8))
    for overrides in (["output=out"], []):  # a given output folder, and the default outputs/render/<timestamp>
        result = _classical(tmp_path, *overrides, f"focus.mask={tmp_path / 'small_mask.png'}")
        assert result.returncode == 2 and "mask of size 10×10" in result.stderr, result.stderr[-2000:]
        assert [p.name for p in tmp_path.iterdir()] == ["small_mask.png"]


def test_a_device_this_machine_lacks_is_a_clear_error_before_any_work(tmp_path):
    result = _classical(tmp_path, "output=out", "device=cuda:99")  # no machine here has 100 GPUs
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: device=cuda:99: " in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_middlebury_pair_renders_without_weights(tmp_path):
    """README: make_dataset.py middlebury writes a real photo with its disparity; render.py focuses the tank."""
    made = _run("make_dataset.py", "middlebury", "--out", "middlebury", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-2000:]
    result = _run(
        "render.py", "mode=classical", "input=middlebury/motorcycle.png", "disparity=middlebury/motorcycle.npy",
        "scale=1", "K=16", "focus.point=[289,205]", "output=out", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rendered = read_image(tmp_path / "out" / "motorcycle.png")
    photo = read_image(tmp_path / "middlebury" / "motorcycle.png")
    assert rendered.shape == photo.shape == (3, 500, 741)
    sharp, blurred = (slice(190, 220), slice(270, 310)), (slice(20, 80), slice(600, 700))  # the tank; the back shelf
    assert (rendered - photo)[:, sharp[0], sharp[1]].abs().mean() < 0.02
    assert (rendered - photo)[:, blurred[0], blurred[1]].abs().mean() > 0.03


def test_folder_of_real_photos(tmp_path, weights, photos):
    """Grayscale, 16-bit PNG, smaller than a tile, odd-sized: all rendered at input × scale, maps written."""
    result = _render(tmp_path, weights, f"input={photos}", f"output={tmp_path / 'out'}", "scale=1.5", "save_maps=true")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    sizes = {stem: tuple(read_image(out / f"{stem}.png").shape[-2:]) for stem in ("gray", "deep16", "small", "odd")}
    assert sizes == {"gray": (60, 60), "deep16": (54, 78), "small": (18, 30), "odd": (56, 106)}
    for stem in sizes:
        image = read_image(out / f"{stem}.png")
        assert torch.isfinite(image).all() and image.std() > 0
        assert (out / f"{stem}_disparity.png").is_file() and (out / f"{stem}_defocus.png").is_file()


def test_single_photo_with_a_mask_and_sweeps(tmp_path, weights, photos):
    mask = np.zeros((12, 20), np.uint8)
    mask[3:9, 5:15] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    result = _render(
        tmp_path, weights, f"input={photos / 'small.jpg'}", f"output={tmp_path / 'out'}", "scale=1", "K=24",
        f"focus.mask={tmp_path / 'mask.png'}", "sweep.focus=[0.2,[10,10]]", "sweep.K=[0,32]", "color_fix=wavelet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    assert (out / "small.png").is_file() and (out / "small_refocus.gif").is_file() and (out / "small_K.gif").is_file()
    assert len(list((out / "small_refocus").glob("frame_*.png"))) == 2


def test_user_errors_exit_2_with_a_clear_message(tmp_path, weights, photos):
    missing = _render(tmp_path, weights, f"input={tmp_path / 'nope.jpg'}")
    assert missing.returncode == 2 and "error: input" in missing.stderr and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    cv2.imwrite(str(tmp_path / "mask.png"), np.full((10, 12), 255, np.uint8))
    wrong_mask = _render(
        tmp_path, weights, f"input={photos / 'odd.png'}", f"focus.mask={tmp_path / 'mask.png'}", "scale=1",
        f"output={tmp_path / 'out'}",
    )  # fmt: skip
    assert wrong_mask.returncode == 2, wrong_mask.stderr[-2000:]
    assert "mask of size 12×10 (W×H) matches neither the input 71×37" in wrong_mask.stderr
    assert not (tmp_path / "out" / "odd.png").exists()  # nothing half-written


def test_missing_weights_and_depth_are_clear(tmp_path, weights, photos):
    no_depth = _render(tmp_path, weights, f"input={photos / 'small.jpg'}", f"depth_model.weights={tmp_path / 'x'}")
    assert no_depth.returncode == 2 and "depth_model.weights" in no_depth.stderr
    no_ckpt = _render(tmp_path, weights, f"input={photos / 'small.jpg'}", "ckpt=null")
    assert no_ckpt.returncode == 2 and "mode=model needs ckpt" in no_ckpt.stderr
