"""MagicBokehPipeline with a pointwise stand-in network: sizes, focus modes, maps, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from magicbokeh.data.transforms import upsample
from magicbokeh.errors import ConfigError, InvalidInputError, ParameterError
from magicbokeh.inference.pipeline import MagicBokehPipeline, merge_lora_adapters, resolve_dtype


class PointwiseModel(torch.nn.Module):
    """Darkens pixels by their defocus: the output reveals which defocus map each pixel received."""

    stride = 8

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, images, defocus):
        return images * self.gain * (1 - 0.5 * defocus)


class RampDepth:
    """Disparity increasing left → right (1 = nearest at the right edge); counts calls."""

    def __init__(self):
        self.calls = 0

    def predict_disparity(self, images):
        self.calls += 1
        width = images.shape[-1]
        return torch.linspace(0, 1, width).view(1, 1, 1, width).expand(images.shape[0], 1, images.shape[-2], width)


def _image(height=40, width=56, seed=0):
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def _pipeline(**kwargs):
    kwargs.setdefault("tile_size", 64)
    kwargs.setdefault("tile_stride", 32)
    kwargs.setdefault("color_fix", "none")
    kwargs.setdefault("progress", False)
    return MagicBokehPipeline(PointwiseModel(), RampDepth(), **kwargs)


def test_output_is_the_bicubic_upsample_processed_pointwise():
    image = _image(37, 53)
    pipe = _pipeline()
    out = pipe.run(image, focus=0.5, K=32, scale=2.0)
    assert out.image.shape == (1, 3, 74, 106)
    upsampled = F.interpolate(image[None], size=(74, 106), mode="bicubic", align_corners=False).clamp(0, 1)
    expected = upsampled * (1 - 0.5 * out.defocus)
    torch.testing.assert_close(out.image, expected, atol=2e-6, rtol=0)
    # defocus = |d − d_f| · K/32 at the output size: zero where d = d_f, largest at the ends of the ramp.
    assert out.focus_disparity == 0.5
    assert out.defocus.shape == (1, 1, 74, 106) and 0.45 < out.defocus.max() <= 0.5


def test_batch_and_rank_are_preserved():
    pipe = _pipeline()
    assert pipe(_image(), focus=0.3, K=8, scale=1).shape == (3, 40, 56)
    batch = torch.stack([_image(seed=1), _image(seed=2)])
    assert pipe(batch, focus=0.3, K=8, scale=1.5).shape == (2, 3, 60, 84)


def test_focus_modes():
    image = _image(40, 80)
    pipe = _pipeline()
    prepared = pipe.prepare(image, scale=1)
    d = prepared.disparity[0, 0, 0]
    # A point focuses the disparity under it (the ramp is smooth, so the window median is the pixel value).
    assert pipe.focus_disparity(prepared, focus=(60, 10)) == pytest.approx(float(d[60]), abs=1e-6)
    mask = torch.zeros(40, 80, dtype=torch.bool)
    mask[:, 10:13] = True
    assert pipe.focus_disparity(prepared, mask=mask) == pytest.approx(float(d[11]), abs=1e-6)
    assert 0.3 < pipe.focus_disparity(prepared, focus="auto") < 0.7  # centre-weighted fallback
    with pytest.raises(ParameterError, match="focus value"):
        pipe.focus_disparity(prepared, focus=1.5)
    with pytest.raises(ParameterError, match="'auto'"):
        pipe.focus_disparity(prepared, focus="center")


def test_mask_and_disparity_at_output_size_are_accepted_and_wrong_sizes_rejected():
    image = _image(20, 30)
    pipe = _pipeline()
    disparity = torch.rand(1, 40, 60)
    out = pipe.run(image, focus=0.5, K=16, scale=2, disparity=disparity)
    torch.testing.assert_close(out.disparity[0], disparity)
    assert pipe.depth_model.calls == 0
    mask = torch.ones(40, 60)
    pipe.run(image, K=16, scale=2, mask=mask)
    with pytest.raises(InvalidInputError, match="mask of size 31×20"):
        pipe.run(image, K=16, scale=2, mask=torch.ones(20, 31))
    with pytest.raises(InvalidInputError, match="disparity of size 30×21"):
        pipe.run(image, K=16, scale=2, disparity=torch.rand(21, 30))


def test_missing_depth_model_is_a_clear_error():
    pipe = MagicBokehPipeline(PointwiseModel(), None, tile_size=64, tile_stride=32, progress=False)
    with pytest.raises(ConfigError, match="pass disparity="):
        pipe(_image(), focus=0.5)


def test_bad_inputs_and_parameters():
    pipe = _pipeline()
    with pytest.raises(ParameterError, match="K must be"):
        pipe(_image(), focus=0.5, K=40)
    with pytest.raises(ParameterError, match="scale"):
        pipe(_image(), focus=0.5, scale=0)
    with pytest.raises(InvalidInputError, match="values in"):
        pipe(_image() * 2, focus=0.5)
    with pytest.raises(ParameterError, match="color_fix"):
        _pipeline(color_fix="hist")
    with pytest.raises(ParameterError, match="needs a GPU"):
        _pipeline(precision="fp16", device="cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16


def test_adain_default_fixes_a_global_tint():
    class Tint(PointwiseModel):
        def forward(self, images, defocus):
            return (images * 0.8 + 0.1) * torch.tensor([1.0, 0.9, 1.1]).view(1, 3, 1, 1)

    pipe = MagicBokehPipeline(Tint(), RampDepth(), tile_size=64, tile_stride=32, progress=False)
    image = _image(50, 50)
    out = pipe(image, focus=0.5, K=0, scale=1)
    torch.testing.assert_close(out.mean(dim=(1, 2)), image.mean(dim=(1, 2)), atol=2e-3, rtol=0)


def test_merge_lora_folds_peft_adapters_without_changing_the_output():
    from peft import LoraConfig, inject_adapter_in_model

    class Linear1x1(PointwiseModel):
        def __init__(self):
            super().__init__()
            self.mix = torch.nn.Conv2d(3, 3, 1)

        def forward(self, images, defocus):
            return torch.sigmoid(self.mix(images)) * (1 - 0.5 * defocus)

    torch.manual_seed(0)
    model = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["mix"]), Linear1x1())
    torch.nn.init.normal_(model.mix.lora_B["default"].weight)  # a non-zero adapter, as after training
    image, disparity = _image(), torch.rand(1, 40, 56)
    unmerged = MagicBokehPipeline(model, tile_size=64, tile_stride=32, progress=False)(image, 0.5, 8, 1, disparity)
    assert merge_lora_adapters(model) == 1 and model.mix.merged
    merged = MagicBokehPipeline(model, tile_size=64, tile_stride=32, progress=False)(image, 0.5, 8, 1, disparity)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert merge_lora_adapters(PointwiseModel()) == 0  # nothing to merge: a warning, not an error


def test_upsample_shrinks_with_antialiasing():
    image = torch.zeros(1, 3, 8, 8)
    image[..., ::2, :] = 1  # a row grating that plain bicubic would alias when halving
    assert upsample(image, 0.5).std() < 0.1  # plain bicubic gives ≈ 0.5 here


def test_presets_give_the_default_K_and_scale():
    ours = MagicBokehPipeline(PointwiseModel(), RampDepth(), progress=False)
    release = MagicBokehPipeline(PointwiseModel(), RampDepth(), preset="release", progress=False)
    assert (ours.default_K, ours.default_scale) == (16.0, 4.0)
    assert (release.default_K, release.default_scale) == (32.0, 1.0)
    out = ours.run(_image(20, 30), focus=0.5)
    assert out.image.shape[-2:] == (80, 120)
    out = release.run(_image(512, 520), focus=0.5)
    assert out.image.shape[-2:] == (512, 520)
    assert out.defocus.max() == pytest.approx(float((out.disparity - 0.5).abs().max()))  # K = 32: defocus = |d − d_f|
    with pytest.raises(ConfigError, match="unknown inference preset 'oficial'"):
        MagicBokehPipeline(PointwiseModel(), preset="oficial")


def test_release_preset_keeps_the_release_limits():
    release = MagicBokehPipeline(PointwiseModel(), RampDepth(), preset="release", progress=False)
    with pytest.raises(InvalidInputError, match="preset=release needs an output of at least 512×512"):
        release(_image(300, 600), focus=0.5)
    for override in ({"tile_size": 256}, {"tile_stride": 128}, {"color_fix": "wavelet"}):
        with pytest.raises(ParameterError, match="preset=release fixes tile.size=512, tile.stride=256"):
            MagicBokehPipeline(PointwiseModel(), preset="release", **override)


def test_release_preset_uses_8_bit_disparity_and_output():
    image = _image(512, 512)
    disparity = torch.linspace(0, 1, 512).view(1, 1, 512).expand(1, 512, 512) * 0.999
    release = MagicBokehPipeline(PointwiseModel(), preset="release", progress=False)
    out = release.run(image, focus=0.5, disparity=disparity)
    torch.testing.assert_close(out.disparity, torch.floor(disparity[None] * 255) / 255, rtol=0, atol=0)
    levels = out.image * 255
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)  # whole 8-bit levels


def test_tile_size_alone_sets_the_stride_and_errors_name_the_wrong_value():
    pipe = MagicBokehPipeline(PointwiseModel(), RampDepth(), tile_size=96, progress=False)
    assert pipe.tile_stride == 48
    assert pipe(_image(100, 150), focus=0.5, K=8, scale=1).shape == (3, 100, 150)
    with pytest.raises(ParameterError, match=r"tile.size=100 is not a multiple of the model stride 8"):
        MagicBokehPipeline(PointwiseModel(), tile_size=100)
    with pytest.raises(ParameterError, match=r"tile.stride=256 is larger than tile.size=96"):
        MagicBokehPipeline(PointwiseModel(), tile_size=96, tile_stride=256)


def test_small_images_run_untiled_at_the_model_stride():
    shapes = []

    class Recorder(PointwiseModel):
        def forward(self, images, defocus):
            shapes.append(tuple(images.shape[-2:]))
            return super().forward(images, defocus)

    pipe = MagicBokehPipeline(Recorder(), RampDepth(), progress=False)  # 512-px tiles
    pipe(_image(37, 53), focus=0.5, K=8, scale=2)
    assert shapes == [(80, 112)]  # 74×106 padded to the stride 8, not to a 512-px tile
