"""The demo's logic without a browser: samples, uploads, caps, and renders that are the CLI pipelines' own.

The page itself is driven in ``test_demo_browser.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import magicbokeh.inference.demo as demo_module
from magicbokeh.errors import ConfigError, ImageReadError, InvalidInputError
from magicbokeh.inference.classical import ClassicalPipeline
from magicbokeh.inference.demo import (
    MOTORCYCLE,
    BokehDemo,
    PageDefaults,
    RenderSettings,
    build_app,
    colorize,
    in_focus_overlay,
    shipped_samples,
    status_text,
)
from magicbokeh.inference.pipeline import MagicBokehPipeline
from magicbokeh.optics import BokehRenderer, HighlightBoost, in_focus_mask

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "data" / "samples"
SCENE = "synthetic scene 000000 (exact disparity)"


class DarkenByDefocus(torch.nn.Module):
    """A stand-in network whose output shows which defocus map each pixel received."""

    stride = 8

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, images, defocus):
        return images * self.gain * (1 - 0.5 * defocus)


class CountingDepth:
    """Disparity rising left → right; counts how often it is asked."""

    def __init__(self):
        self.calls = 0

    def predict_disparity(self, images):
        self.calls += 1
        width = images.shape[-1]
        return torch.linspace(0, 1, width).view(1, 1, 1, width).expand(images.shape[0], 1, images.shape[-2], width)


def _demo(tmp_path, *, model=None, depth_model=None, **kwargs) -> BokehDemo:
    renderer = BokehRenderer(max_coc_px=8.0, num_layers=8)
    kwargs.setdefault("max_input_pixels", 1_000_000)
    kwargs.setdefault("max_output_pixels", 4_000_000)
    kwargs.setdefault("sweep_frames", 3)
    return BokehDemo(
        ClassicalPipeline(renderer, depth_model=depth_model),
        model,
        shipped_samples(SAMPLES),
        output_dir=tmp_path / "out",
        **kwargs,
    )


def _model_pipeline(color_fix="adain"):
    return MagicBokehPipeline(DarkenByDefocus(), tile_size=64, tile_stride=32, color_fix=color_fix, progress=False)


def test_samples_ship_the_motorcycle_first_then_scenes_with_disparity_then_photos():
    samples = shipped_samples(SAMPLES)
    names = list(samples)
    assert names[0] == MOTORCYCLE
    image, disparity = samples[MOTORCYCLE].load()
    assert image.shape == (3, 500, 741) and disparity.shape == (1, 500, 741)
    scenes = [name for name in names if name.startswith("synthetic scene")]
    assert len(scenes) == 3
    for name in scenes:
        image, disparity = samples[name].load()
        assert disparity is not None and disparity.shape[-2:] == image.shape[-2:]
    photos = [name for name in names if "(photo" in name]
    assert len(photos) == 3 and all(samples[name].load()[1] is None for name in photos)


def test_a_click_renders_exactly_what_the_cli_pipeline_renders(tmp_path):
    demo = _demo(tmp_path)
    current = demo.load_sample(SCENE)
    settings = RenderSettings(K=24, scale=2, mode="classical")
    near_object = (25.0, 101.0)  # the scene's nearest object (disparity 1); (100, 20) is background (0.04)
    _, result = demo.render(current, near_object, settings)
    cli = ClassicalPipeline(demo.classical.renderer).run(
        current.image, focus=near_object, K=24, scale=2, disparity=current.disparity
    )
    torch.testing.assert_close(result.output.image, cli.image, rtol=0, atol=0)
    assert result.output.focus_disparity == cli.focus_disparity
    assert result.output.image.shape == (1, 3, 256, 256)
    # A different point on another surface gives another focus plane and another picture.
    _, elsewhere = demo.render(current, (100.0, 20.0), settings)
    assert result.output.focus_disparity > 0.9 and elsewhere.output.focus_disparity < 0.1
    assert (elsewhere.output.image - result.output.image).abs().max() > 0.1


def test_model_mode_shares_the_network_and_applies_the_chosen_colour_fix(tmp_path):
    shared = _model_pipeline("adain")
    demo = _demo(tmp_path, model=shared)
    current = demo.load_sample(SCENE)
    settings = RenderSettings(K=32, scale=1, mode="model", color_fix="none")
    _, result = demo.render(current, 0.5, settings)
    assert "model, colour fix none" in status_text(current, result, settings)
    expected = _model_pipeline("none").run(current.image, focus=0.5, K=32, scale=1, disparity=current.disparity)
    torch.testing.assert_close(result.output.image, expected.image, rtol=0, atol=0)
    assert shared.color_fix == "adain"  # the page's choice does not leak into the shared pipeline
    assert demo.pipeline_for(RenderSettings(mode="model", color_fix="wavelet")).model is shared.model


def test_model_mode_without_a_checkpoint_says_how_to_get_one(tmp_path):
    demo = _demo(tmp_path)
    with pytest.raises(ConfigError, match=r"ckpt="):
        demo.render(demo.load_sample(SCENE), "auto", RenderSettings(mode="model"))


def test_classical_options_change_a_copy_of_the_configured_renderer(tmp_path):
    demo = _demo(tmp_path)
    base = demo.classical.renderer
    pipeline = demo.pipeline_for(RenderSettings(aperture="polygon", blades=5, highlights=True))
    assert pipeline.renderer.aperture.shape == "polygon" and pipeline.renderer.aperture.blades == 5
    assert isinstance(pipeline.renderer.highlight, HighlightBoost)
    assert pipeline.renderer.max_coc_px == base.max_coc_px and pipeline.renderer.num_layers == base.num_layers
    assert base.aperture.shape == "disk" and base.highlight is None and demo.classical.renderer is base


def test_a_non_image_upload_is_an_error_naming_the_file(tmp_path):
    upload = tmp_path / "upload_1234" / "notes.txt"
    upload.parent.mkdir()
    upload.write_text("not a photo")
    with pytest.raises(ImageReadError) as caught:
        _demo(tmp_path).load_photo(upload)
    message = str(caught.value)
    assert "'notes.txt' is not a readable image" in message and "upload_1234" not in message


def test_a_photo_above_the_pixel_cap_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    photo = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(photo)
    monkeypatch.setattr(demo_module, "read_image", lambda path: pytest.fail("decoded a photo above the cap"))
    with pytest.raises(InvalidInputError, match=r"'big.png' is 300×200 = 0.06 MP, above this demo's cap of 0.05 MP"):
        _demo(tmp_path, max_input_pixels=50_000).load_photo(photo)


def test_an_output_above_the_cap_asks_for_a_smaller_scale(tmp_path):
    demo = _demo(tmp_path, max_output_pixels=100_000)
    current = demo.load_sample(SCENE)  # 128×128: ×2 is 65 536 pixels, ×4 is 262 144
    demo.render(current, "auto", RenderSettings(K=8, scale=2))
    with pytest.raises(InvalidInputError, match="choose a smaller scale"):
        demo.render(current, "auto", RenderSettings(K=8, scale=4))


def test_an_uploaded_disparity_map_must_have_the_photos_size(tmp_path):
    demo = _demo(tmp_path)
    current = demo.load_sample(SCENE)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.full((64, 64), 0.5, dtype=np.float32))
    with pytest.raises(InvalidInputError, match=r"'wrong.npy' is 64×64 but the photo is 128×128"):
        demo.with_disparity(current, wrong)
    right = tmp_path / "right.npy"
    np.save(right, np.linspace(0, 1, 128 * 128, dtype=np.float32).reshape(128, 128))
    updated = demo.with_disparity(current, right)
    assert updated.disparity_source == "uploaded (right.npy)"
    torch.testing.assert_close(updated.disparity[0], torch.from_numpy(np.load(right)))


def test_a_photo_without_disparity_uses_the_depth_model_once_or_explains_there_is_none(tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (120, 80, 40)).save(photo)
    settings = RenderSettings(K=16, scale=1)
    without_depth = _demo(tmp_path)
    with pytest.raises(ConfigError, match="no disparity for this image and no depth model"):
        without_depth.render(without_depth.load_photo(photo), (10.0, 10.0), settings)

    depth = CountingDepth()
    demo = _demo(tmp_path, depth_model=depth)
    current = demo.load_photo(photo)
    current, first = demo.render(current, (10.0, 10.0), settings)
    current, second = demo.render(current, (60.0, 10.0), settings)
    assert depth.calls == 1 and current.disparity.shape == (1, 48, 64)
    assert first.output.focus_disparity < 0.2 < 0.8 < second.output.focus_disparity  # the ramp, left vs right


def test_refocus_sweep_writes_a_gif_that_pulls_focus_far_to_near(tmp_path):
    demo = _demo(tmp_path)
    current = demo.load_sample(SCENE)
    gif_path = demo.refocus_gif(current, RenderSettings(K=32, scale=1))
    assert gif_path.parent == tmp_path / "out" and gif_path.name == "synthetic_scene_000000_refocus_000.gif"
    with Image.open(gif_path) as gif:
        frames = []
        for index in range(gif.n_frames):  # 3 focus planes, forwards then back: 3 + 1 frames
            gif.seek(index)
            frames.append(np.asarray(gif.convert("RGB"), dtype=np.int16))
    assert len(frames) == 4
    assert np.abs(frames[0] - frames[2]).max() > 30 and np.array_equal(frames[1], frames[3])
    assert len(list((tmp_path / "out" / gif_path.stem).glob("frame_*.png"))) == 3


def test_pictures_for_the_page():
    disparity = torch.linspace(0, 1, 5).view(1, 1, 1, 5)
    colours = colorize(disparity)
    assert colours.shape == (1, 5, 3) and colours.dtype == np.uint8
    assert not np.array_equal(colours[0, 0], colours[0, -1])
    # Fixed range: a map of zeros is the colormap's low end whatever its maximum.
    np.testing.assert_array_equal(colorize(torch.zeros(1, 1, 2, 2))[0, 0], colours[0, 0])

    image = torch.full((1, 3, 2, 2), 0.5)
    defocus = torch.tensor([[[[0.0, 0.05], [0.5, 1.0]]]])
    overlay = in_focus_overlay(image, defocus).astype(int)
    mask = in_focus_mask(defocus)[0, 0].numpy()
    assert mask.tolist() == [[True, True], [False, False]]
    assert (overlay[mask][:, 1] > overlay[~mask][:, 1] + 50).all()  # in focus: tinted green; out: dimmed


def test_the_page_builds_and_rejects_impossible_defaults(tmp_path):
    demo = _demo(tmp_path)
    app = build_app(demo, PageDefaults(scale=1))
    assert type(app).__name__ == "Blocks"
    with pytest.raises(ConfigError, match="ui.mode=model needs ckpt"):
        build_app(demo, PageDefaults(mode="model"))
    with pytest.raises(ConfigError, match="not a shipped sample"):
        build_app(demo, PageDefaults(sample="nope"))
    with pytest.raises(ConfigError, match="scale one of"):
        build_app(demo, PageDefaults(scale=3))


@pytest.mark.slow  # starts Python, torch and Gradio in a subprocess
def test_cli_config_errors_are_one_line_and_exit_2(tmp_path):
    command = [
        sys.executable, str(ROOT / "scripts" / "demo.py"), "ui.sample=nope", f"hydra.run.dir={tmp_path / 'run'}",
        f"output={tmp_path / 'out'}", "server.port=0",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ui.sample 'nope' is not a shipped sample")
    assert "Traceback" not in result.stderr
