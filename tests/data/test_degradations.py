"""Real-ESRGAN degradation: determinism, shapes, parameter statistics, identities, kernels, the real JPEG codec, and
the osediff preset (OSEDiff's JPEG engine, resize grid and grey-noise luma)."""

from __future__ import annotations

import dataclasses
import io
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image
from torchvision.transforms.functional import rgb_to_grayscale

from magicbokeh.data import degradations
from magicbokeh.data.degradations import (
    BT601_LUMA,
    KERNEL_TYPES,
    TORCHVISION_LUMA,
    RealESRGANDegradation,
    add_blur,
    add_gaussian_noise,
    add_jpeg,
    add_poisson_noise,
    add_resize,
    add_resize_by_factor,
    apply_noise,
    circular_lowpass_kernel,
    mixed_kernel,
    quantize_8bit,
    random_add_blur,
    random_add_jpeg,
    random_add_noise,
    random_resize,
    sample_noise,
)
from magicbokeh.data.diff_jpeg import diff_jpeg
from magicbokeh.errors import InvalidInputError, ParameterError
from magicbokeh.utils.config import compose_config


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _smooth_image(size: int = 64, batch: int = 1) -> torch.Tensor:
    """A smooth colourful image (gradients + a disk), 8-bit quantised, so codecs and resizes behave like on photos."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disk = (((x - 0.4) ** 2 + (y - 0.6) ** 2) < 0.05).float()
    image = torch.stack([x, y, 0.5 * (1 - x) + 0.4 * disk]).clamp(0, 1)
    return quantize_8bit(image.expand(batch, -1, -1, -1).clone())


@pytest.fixture(scope="module")
def degradation() -> RealESRGANDegradation:
    return RealESRGANDegradation()


@pytest.fixture(scope="module")
def default_params(degradation):
    generator = _gen(0)
    return [degradation.sample_params(generator) for _ in range(1200)]


# -- determinism, shapes ----------------------------------------------------------------------------------------------
def test_same_seed_is_bit_identical_and_different_seeds_differ(degradation):
    images = _smooth_image(64, batch=2)
    first = degradation(images, _gen(7))
    again = degradation(images, _gen(7))
    other = degradation(images, _gen(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_output_shape_range_and_8bit_grid(degradation):
    images = _smooth_image(64, batch=3)
    out = degradation(images, _gen(1))
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out * 255, (out * 255).round())


def test_without_resize_back_the_output_is_lr_size():
    out = RealESRGANDegradation(resize_back=False)(_smooth_image(64, batch=2), _gen(2))
    assert out.shape == (2, 3, 16, 16)


def test_batch_equals_images_one_after_another(degradation):
    images = torch.cat([_smooth_image(48), _smooth_image(48).flip(-1)])
    generator = _gen(3)
    sequential = torch.cat([degradation(images[i : i + 1], generator) for i in range(2)])
    assert torch.equal(degradation(images, _gen(3)), sequential)


def test_same_params_give_the_same_degradation_noise_included(degradation):
    image = _smooth_image(64)
    params = degradation.sample_params(_gen(4))
    assert torch.equal(degradation.apply(image, params), degradation.apply(image, params))


def test_bad_inputs_raise_clear_errors(degradation):
    with pytest.raises(InvalidInputError, match="B×3×H×W"):
        degradation(torch.rand(3, 32, 32), _gen(0))
    with pytest.raises(InvalidInputError, match="NaN"):
        degradation(torch.full((1, 3, 32, 32), float("nan")), _gen(0))
    with pytest.raises(ParameterError, match="resize_range"):
        RealESRGANDegradation(resize_range=[1.5, 0.15])
    with pytest.raises(ParameterError, match="kernel_prob"):
        RealESRGANDegradation(kernel_prob=[1.0, 0.0])
    with pytest.raises(ParameterError, match="jpeg_range"):
        RealESRGANDegradation(jpeg_range=[0, 120])


# -- sampled statistics: every stage stays in its configured range ----------------------------------------------------
def _close(fraction: float, expected: float, n: int) -> bool:
    return abs(fraction - expected) <= 4.5 * math.sqrt(expected * (1 - expected) / n) + 1e-9


def test_kernel_statistics(default_params):
    n = len(default_params)
    types = Counter(p.kernel1_type for p in default_params)
    assert _close(types["sinc"] / n, 0.1, n)
    for kernel_type, prob in zip(KERNEL_TYPES, (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)):
        assert _close(types[kernel_type] / n, 0.9 * prob, n), kernel_type
    sizes = {p.kernel1.shape[-1] for p in default_params}
    assert sizes == set(range(7, 22, 2))
    assert _close(sum(p.kernel2 is not None for p in default_params) / n, 0.8, n)
    assert _close(sum(p.sinc is not None for p in default_params) / n, 0.8, n)
    for p in default_params:
        for kernel in (p.kernel1, p.kernel2, p.sinc):
            if kernel is not None:
                assert abs(float(kernel.sum()) - 1) < 1e-5


def test_resize_noise_jpeg_statistics(default_params):
    n = len(default_params)
    scales1 = np.array([p.resize1[0] for p in default_params])
    assert scales1.min() >= 0.15 and scales1.max() <= 1.5
    assert _close((scales1 > 1).mean(), 0.2, n) and _close((scales1 < 1).mean(), 0.7, n)
    assert _close((scales1 == 1).mean(), 0.1, n)
    scales2 = np.array([p.resize2[0] for p in default_params])
    assert scales2.min() >= 0.3 and scales2.max() <= 1.2 and _close((scales2 == 1).mean(), 0.3, n)
    modes = Counter(p.resize1[1] for p in default_params)
    assert set(modes) == {"area", "bilinear", "bicubic"} and all(_close(c / n, 1 / 3, n) for c in modes.values())
    for stage, sigma_max, poisson_max in (("noise1", 30, 3.0), ("noise2", 25, 2.5)):
        draws = [getattr(p, stage) for p in default_params]
        gaussian = [d.strength for d in draws if d.kind == "gaussian"]
        poisson = [d.strength for d in draws if d.kind == "poisson"]
        assert _close(len(gaussian) / n, 0.5, n) and len(gaussian) + len(poisson) == n
        assert 1 / 255 <= min(gaussian) and max(gaussian) <= sigma_max / 255
        assert 0.05 <= min(poisson) and max(poisson) <= poisson_max
        assert _close(sum(d.gray for d in draws) / n, 0.4, n)
    qualities = [q for p in default_params for q in (p.jpeg1, p.jpeg2)]
    assert all(isinstance(q, int) and 30 <= q <= 95 for q in qualities)
    assert _close(sum(p.final_order == "jpeg_resize_sinc" for p in default_params) / n, 0.5, n)


# -- identities at zero strength --------------------------------------------------------------------------------------
def test_none_preset_is_the_identity_on_8bit_images():
    degradation = instantiate(compose_config("train", ["degradation=none"]).degradation)
    images = _smooth_image(40, batch=2)
    assert torch.equal(degradation(images, _gen(5)), images)


def test_each_operation_is_the_identity_at_zero_strength():
    image = _smooth_image(32)
    delta = torch.zeros(5, 5)
    delta[2, 2] = 1
    assert torch.allclose(add_blur(image, delta), image, atol=1e-6)
    assert torch.equal(add_resize(image, (32, 32), "bicubic"), image)
    assert torch.equal(add_gaussian_noise(image, 0.0, False, _gen(0)), image)
    assert torch.equal(add_poisson_noise(image, 0.0, True, _gen(0)), image)
    assert torch.equal(quantize_8bit(image), image)
    off = sample_noise(_gen(0), noise_prob=0.0)
    assert off.kind == "none" and torch.equal(apply_noise(image, off), image)


# -- kernels ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel_type", KERNEL_TYPES)
def test_mixed_kernels_are_normalised_centred_and_non_negative(kernel_type):
    kernel = mixed_kernel(kernel_type, 15, sigma_x=2.0, sigma_y=0.8, rotation=0.6, beta=1.7)
    assert kernel.shape == (15, 15) and kernel.min() >= 0
    assert abs(float(kernel.sum()) - 1) < 1e-6
    assert torch.allclose(kernel, kernel.flip(0, 1), atol=1e-7)  # point-symmetric: convolution = correlation
    assert int(kernel.argmax()) == 15 * 7 + 7


def test_iso_kernels_are_rotation_invariant_and_aniso_are_not():
    iso = mixed_kernel("iso", 11, 2.0, 0.5, 1.0)
    assert torch.allclose(iso, iso.T, atol=1e-7)
    aniso = mixed_kernel("aniso", 11, 2.0, 0.5, 0.0)
    assert aniso[5, 0] > aniso[0, 5]  # wider along x than along y


def test_sinc_kernel_matches_its_formula_and_sums_to_one():
    kernel = circular_lowpass_kernel(math.pi / 2, 13)
    assert abs(float(kernel.sum()) - 1) < 1e-6 and kernel.min() < 0  # ringing lobes
    raw_centre = (math.pi / 2) ** 2 / (4 * math.pi)
    raw_side = (math.pi / 2) * float(torch.special.bessel_j1(torch.tensor(math.pi / 2))) / (2 * math.pi)
    assert float(kernel[6, 7] / kernel[6, 6]) == pytest.approx(raw_side / raw_centre, rel=1e-5)
    with pytest.raises(ParameterError):
        circular_lowpass_kernel(4.0, 13)
    with pytest.raises(ParameterError):
        mixed_kernel("iso", 8, 1.0, 1.0, 0.0)


def test_blur_preserves_a_constant_image():
    image = torch.full((1, 3, 24, 24), 0.3)
    out = add_blur(image, mixed_kernel("generalized_aniso", 21, 3.0, 1.0, 0.3, 0.7))
    assert torch.allclose(out, image, atol=1e-6)


# -- noise, JPEG ------------------------------------------------------------------------------------------------------
def test_gaussian_noise_has_the_requested_sigma_and_gray_noise_is_shared():
    image = torch.full((1, 3, 128, 128), 0.5)
    noisy = add_gaussian_noise(image, 10 / 255, False, _gen(0))
    assert float((noisy - image).std()) == pytest.approx(10 / 255, rel=0.05)
    gray = add_gaussian_noise(image, 10 / 255, True, _gen(0))
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])


def test_poisson_noise_is_zero_mean_with_shot_noise_variance():
    image = torch.full((1, 3, 128, 128), 0.5)
    image[..., :64] = 0.25  # two distinct levels → v = 2, so variance = scale² · I / v
    scale, level = 0.2, 128 / 255  # small scale: clipping at 1 stays negligible
    noise = add_poisson_noise(image, scale, False, _gen(0)) - image
    right = noise[..., 64:]
    assert abs(float(right.mean())) < 0.01
    assert float(right.var()) == pytest.approx(scale**2 * level / 2, rel=0.08)


def test_jpeg_is_the_real_codec():
    image = _smooth_image(64)
    out = add_jpeg(image, 40)
    array = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=40)
    reference = torch.from_numpy(np.asarray(Image.open(buffer)).copy()).permute(2, 0, 1)[None].float() / 255
    assert not torch.equal(out, image)
    assert float((out - reference).abs().mean()) < 1 / 255  # libjpeg via PIL agrees up to IDCT rounding
    errors = [float((add_jpeg(image, q) - image).abs().mean()) for q in (10, 50, 95)]
    assert errors[0] > errors[1] > errors[2]
    with pytest.raises(ParameterError):
        add_jpeg(image, 0)


def test_random_wrappers_are_seeded_and_respect_ranges():
    images = _smooth_image(32, batch=2)
    assert torch.equal(random_add_blur(images, _gen(1)), random_add_blur(images, _gen(1)))
    resized = random_resize(images, _gen(1), probs=(0, 1, 0), scale_range=(0.5, 1.0))
    assert all(16 <= r.shape[-1] <= 32 for r in resized)
    assert torch.equal(random_add_noise(images, _gen(2)), random_add_noise(images, _gen(2)))
    assert torch.equal(random_add_jpeg(images, _gen(3), (50, 50)), add_jpeg(images, 50))


def test_realesrgan_config_holds_osediff_defaults():
    degradation = instantiate(compose_config("train", ["degradation=realesrgan"]).degradation)
    assert degradation.scale == 4 and degradation.resize_back
    assert degradation.resize_prob == (0.2, 0.7, 0.1) and degradation.resize_range2 == (0.3, 1.2)
    assert degradation.kernel2.sigma == (0.2, 1.5) and degradation.final_sinc_prob == 0.8
    assert degradation.noise1["sigma_range"] == (1, 30) and degradation.noise2["poisson_scale_range"] == (0.05, 2.5)


@pytest.mark.gpu
def test_runs_on_cuda_with_a_cuda_generator(degradation):
    images = _smooth_image(64, batch=2).cuda()
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = degradation(images, generator)
    assert out.device == images.device and out.shape == images.shape
    assert torch.equal(out, degradation(images, torch.Generator(device="cuda").manual_seed(0)))


def test_cpu_opencv_blur_matches_the_conv2d_path():
    images = _smooth_image(40, batch=2)
    kernel = mixed_kernel("aniso", 21, 3.0, 1.0, 0.4)
    fast = add_blur(images, kernel)
    reference = add_blur(images.double(), kernel).float()  # float64 takes the conv2d path
    assert fast.dtype == torch.float32 and fast.shape == images.shape
    assert torch.allclose(fast, reference, atol=5e-4)


# -- the osediff preset: OSEDiff's JPEG engine, resize grid and grey-noise luma ---------------------------------------
@pytest.fixture(scope="module")
def osediff() -> RealESRGANDegradation:
    return instantiate(compose_config("train", ["degradation=osediff"]).degradation)


def test_osediff_preset_composes_and_selects_osediffs_engine(osediff):
    default = instantiate(compose_config("train", ["degradation=realesrgan"]).degradation)
    assert (default.jpeg_codec, default.resize_grid, default.gray_noise_luma) == ("libjpeg", "rounded", BT601_LUMA)
    assert default.quantize_before_resize_back and not default.jpeg_transpose_tables
    assert (osediff.jpeg_codec, osediff.resize_grid, osediff.gray_noise_luma) == (
        "diff_jpeg", "scale_factor", TORCHVISION_LUMA,
    )  # fmt: skip
    assert osediff.jpeg_transpose_tables and not osediff.quantize_before_resize_back
    # the sampled ranges are realesrgan's: the same generator draws the same parameters
    assert osediff.resize_prob == default.resize_prob and osediff.jpeg_range == default.jpeg_range
    first, second = default.sample_params(_gen(9)), osediff.sample_params(_gen(9))
    assert (first.resize1, first.resize2, first.jpeg1, first.jpeg2) == (
        second.resize1, second.resize2, second.jpeg1, second.jpeg2,
    )  # fmt: skip


def test_osediff_preset_is_seeded_8bit_and_degrades_harder_with_the_same_parameters(osediff):
    images = _smooth_image(64, batch=2)
    out = osediff(images, _gen(11))
    assert out.shape == images.shape and torch.equal(out * 255, (out * 255).round())
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(out, osediff(images, _gen(11)))
    params = osediff.sample_params(_gen(12))
    assert torch.equal(osediff.apply(images[:1], params), osediff.apply(images[:1], params))
    default = RealESRGANDegradation()
    assert not torch.equal(osediff.apply(images[:1], params), default.apply(images[:1], params))


def _record_resizes(monkeypatch) -> list[tuple]:
    """Spy on the two resize operations the pipeline calls: (name, requested size or factor, mode)."""
    calls = []
    by_size, by_factor = degradations.add_resize, degradations.add_resize_by_factor

    def spy_size(images, size, mode):
        calls.append(("size", tuple(size), mode))
        return by_size(images, size, mode)

    def spy_factor(images, factor, mode):
        calls.append(("factor", factor, mode))
        return by_factor(images, factor, mode)

    monkeypatch.setattr(degradations, "add_resize", spy_size)
    monkeypatch.setattr(degradations, "add_resize_by_factor", spy_factor)
    return calls


def test_osediff_resizes_by_scale_factor_then_truncated_sizes(osediff, monkeypatch):
    # 54×70 at ×4: H/4 = 13.5 and W/4 = 17.5, so truncating and rounding disagree at every stage.
    image = _smooth_image(70)[..., :54, :].contiguous()
    params = dataclasses.replace(
        osediff.sample_params(_gen(13)), resize1=(0.7, "bicubic"), resize2=(0.9, "bilinear"), second_order=True,
        final_mode="area", back_mode="bicubic",
    )  # fmt: skip
    calls = _record_resizes(monkeypatch)
    osediff.apply(image, params)
    assert calls == [
        ("factor", 0.7, "bicubic"),  # F.interpolate(scale_factor=0.7): 37×49
        ("size", (12, 15), "bilinear"),  # int(54/4·0.9) = 12, int(70/4·0.9) = 15
        ("size", (13, 17), "area"),  # 54 // 4, 70 // 4
        ("size", (54, 70), "bicubic"),
    ]
    calls.clear()
    RealESRGANDegradation().apply(image, params)
    assert [call[1] for call in calls] == [(38, 49), (13, 16), (14, 18), (54, 70)]  # round() everywhere


def test_resize_by_factor_samples_the_grid_of_the_exact_factor():
    image = _smooth_image(40)
    for mode in ("bilinear", "bicubic", "area"):
        out = add_resize_by_factor(image, 0.37, mode)
        assert out.shape[-2:] == (14, 14)  # ⌊40·0.37⌋
        corners = {} if mode == "area" else {"align_corners": False}
        reference = F.interpolate(image, scale_factor=0.37, mode=mode, **corners)
        assert torch.equal(out, reference)
    # bilinear at factor 0.37 samples at (i + ½)/0.37 − ½, the size-based resize at (i + ½)·40/14 − ½: not the same
    assert not torch.allclose(add_resize_by_factor(image, 0.37, "bilinear"), add_resize(image, (14, 14), "bilinear"))
    assert torch.equal(add_resize_by_factor(image, 1.0, "bicubic"), image)
    assert add_resize_by_factor(image, 0.01, "area").shape[-2:] == (1, 1)


def test_grey_poisson_noise_uses_the_given_luma_weights():
    assert BT601_LUMA == (0.299, 0.587, 0.114) and TORCHVISION_LUMA == (0.2989, 0.587, 0.114)
    ramp = torch.rand(1, 3, 32, 32, generator=_gen(0))
    weighted = (ramp * torch.tensor(TORCHVISION_LUMA).reshape(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    assert torch.allclose(weighted, rgb_to_grayscale(ramp), atol=1e-7)  # torchvision's grey, which BasicSR calls
    # Red at 1 and green on a fine ramp: the 0.0001 change in R's weight moves some pixels to the next 8-bit level.
    image = torch.zeros(1, 3, 64, 64)
    image[:, 0] = 1.0
    image[:, 1] = torch.linspace(0, 1, 64 * 64).reshape(64, 64)
    bt601 = add_poisson_noise(image, 1.0, True, _gen(1))
    torchvision = add_poisson_noise(image, 1.0, True, _gen(1), luma=TORCHVISION_LUMA)
    assert torch.equal(bt601, add_poisson_noise(image, 1.0, True, _gen(1), luma=BT601_LUMA))
    assert not torch.equal(bt601, torchvision)


def test_engine_options_are_checked():
    with pytest.raises(ParameterError, match="jpeg_codec"):
        RealESRGANDegradation(jpeg_codec="pillow")
    with pytest.raises(ParameterError, match="jpeg_transpose_tables"):
        RealESRGANDegradation(jpeg_transpose_tables=True)
    with pytest.raises(ParameterError, match="resize_grid"):
        RealESRGANDegradation(resize_grid="nearest")
    with pytest.raises(ParameterError, match="gray_noise_luma"):
        RealESRGANDegradation(gray_noise_luma=[0.5, 0.5])


@pytest.mark.gpu
def test_osediff_preset_runs_on_cuda_and_its_jpeg_matches_the_cpu(osediff):
    images = _smooth_image(64, batch=2)
    out = osediff(images.cuda(), torch.Generator(device="cuda").manual_seed(0))
    assert out.device == images.cuda().device and out.shape == images.shape
    assert torch.equal(out, osediff(images.cuda(), torch.Generator(device="cuda").manual_seed(0)))
    # float summation order differs between devices, so a coefficient on a rounding boundary may flip: compare means
    assert float((diff_jpeg(images.cuda(), 50).cpu() - diff_jpeg(images, 50)).abs().mean()) < 1e-4
