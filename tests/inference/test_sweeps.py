"""Refocus/K sweeps: one frame per setting, PNG frames + a ping-pong GIF (+ MP4 when OpenCV can)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from magicbokeh.errors import ParameterError
from magicbokeh.inference.pipeline import MagicBokehPipeline
from magicbokeh.inference.sweeps import refocus_sweep, strength_sweep, sweep_label, write_sweep


class Darken(torch.nn.Module):
    stride = 8

    def forward(self, images, defocus):
        return images * (1 - defocus)


def _pipeline_and_prepared():
    pipe = MagicBokehPipeline(Darken(), tile_size=64, tile_stride=32, color_fix="none", progress=False)
    image = torch.full((3, 24, 40), 0.8)
    disparity = torch.linspace(0, 1, 40).expand(1, 24, 40)
    return pipe, pipe.prepare(image, scale=1, disparity=disparity)


def test_refocus_sweep_moves_the_sharp_column():
    pipe, prepared = _pipeline_and_prepared()
    frames = refocus_sweep(pipe, prepared, [0.0, (20, 5), 1.0], K=32)
    assert len(frames) == 3
    sharpest = [int(frame[0, 0, 0].argmax()) for frame in frames]  # the undarkened column is in focus
    assert sharpest == [0, 20, 39]


def test_strength_sweep_darkens_more_with_K():
    pipe, prepared = _pipeline_and_prepared()
    frames = strength_sweep(pipe, prepared, 0.0, [0, 16, 32])
    means = [float(frame.mean()) for frame in frames]
    assert means[0] == pytest.approx(0.8) and means[0] > means[1] > means[2]
    with pytest.raises(ParameterError):
        strength_sweep(pipe, prepared, 0.0, [])


def test_write_sweep_writes_frames_gif_and_mp4(tmp_path):
    frames = [torch.full((1, 3, 30, 50), value) for value in (0.1, 0.5, 0.9)]
    paths = write_sweep(frames, tmp_path, "photo_refocus", fps=5, max_side=20)
    names = {p.name for p in paths}
    assert {"frame_000.png", "frame_002.png", "photo_refocus.gif"} <= names
    with Image.open(tmp_path / "photo_refocus.gif") as gif:
        assert gif.n_frames == 4  # ping-pong: 0 1 2 1
        assert max(gif.size) == 20  # animation downscaled, frames kept full size
    with Image.open(tmp_path / "photo_refocus" / "frame_001.png") as frame:
        assert frame.size == (50, 30)
    mp4 = tmp_path / "photo_refocus.mp4"
    assert (mp4 in paths) == mp4.is_file()
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_labelled_frames_say_their_focus_and_K(tmp_path):
    """The label goes into each frame's file name and is captioned (white on a dark band) on the animation."""
    frames = [torch.full((1, 3, 60, 100), 0.5) for _ in range(2)]
    labels = [sweep_label(0.2, 16), sweep_label((420, 310.5), 16)]
    assert labels == ["focus 0.20, K 16", "focus x420 y310.5, K 16"]
    assert sweep_label(0.43, 8.5) == "focus 0.43, K 8.5"
    write_sweep(frames, tmp_path, "photo_refocus", labels=labels, mp4=False)
    names = sorted(p.name for p in (tmp_path / "photo_refocus").iterdir())
    assert names == ["frame_000_focus-0.20-K-16.png", "frame_001_focus-x420-y310.5-K-16.png"]
    with Image.open(tmp_path / "photo_refocus.gif") as gif:
        top = np.asarray(gif.convert("RGB"))[:12]
    assert top.min() < 30 and top.max() > 225  # dark band with white text where the frame is uniform grey
    with Image.open(tmp_path / "photo_refocus" / names[0]) as frame:
        assert np.ptp(np.asarray(frame)) == 0  # the PNG frame itself is left clean
    with pytest.raises(ParameterError, match="one label per frame"):
        write_sweep(frames, tmp_path, "x", labels=labels[:1])
