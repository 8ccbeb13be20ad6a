"""Reduced-precision inference against float32: the tiny network alone and inside MagicBokehPipeline.

The tolerance. A correct half-precision forward differs from float32 by rounding error carried through the network.
For a fixed network and input that error is proportional to the format's unit roundoff u = 2⁻ᵖ (p significand
bits: 8 for bf16, 11 for fp16), so the bounds are stated in units of u, one statement for both formats:

    mean |Δ| ≤ 1.5 u,   max |Δ| ≤ 12 u          (bf16: 0.0059 / 0.047;  fp16: 0.00073 / 0.0059)

Measured on the CPU (torch 2.14, the tiny network with randomised adapters, this file's inputs), in bf16 and fp16
alike: the network alone mean 0.89 u, max 6.0–6.3 u; the pipeline (4 tiles, AdaIN or wavelet colour fix) mean
0.89–1.02 u, max 5.4–7.6 u — the same multiple of u in both formats, as the rounding model predicts (bf16's error is
8× fp16's). A real precision bug in the pipeline's own arithmetic lands well outside: AdaIN statistics accumulated
in the half dtype give mean 4.9–6.3 u and max 45–47 u. Bugs of the order of u itself (tiles cast to the half dtype
before the network, a half-precision tile accumulator) cannot be told from rounding by an output tolerance; the
float32 contract test below catches them exactly instead. (x₀ computed in bf16 is of that kind too at the output of
a network that runs in bf16 throughout: its rounding is small beside that of the bf16 UNet's ε̂, which the formula
multiplies by √(1−ᾱ)/√ᾱ ≈ 14.6; the x₀ formula has its own test in the training tests.)
"""

from __future__ import annotations

import copy

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from magicbokeh.errors import ParameterError
from magicbokeh.inference.pipeline import MagicBokehPipeline, resolve_dtype
from magicbokeh.utils.config import CONFIG_DIR
from tests.models.conftest import inputs, randomize

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
MEAN_BOUND_U, MAX_BOUND_U = 1.5, 12.0
PRECISION_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def _assert_within_rounding(actual: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> None:
    assert actual.dtype == torch.float32 and actual.shape == reference.shape
    u = UNIT_ROUNDOFF[dtype]
    error = (actual - reference).abs()
    mean_u, max_u = error.mean().item() / u, error.max().item() / u
    assert mean_u <= MEAN_BOUND_U and max_u <= MAX_BOUND_U, f"{dtype}: mean {mean_u:.2f} u, max {max_u:.1f} u"
    # Not vacuous: the half-precision network really ran (a float32 run would differ by ~1e-7).
    assert mean_u > 0.05


@pytest.fixture
def trained_tiny_model():
    return build_trained_tiny_model()


def build_trained_tiny_model() -> torch.nn.Module:
    """The tiny network (``configs/model/tiny.yaml``) with every adapter (SR LoRA, VAE LoRA, ControlNet, FAMA) away
    from its zero init."""
    torch.manual_seed(0)
    model = hydra.utils.instantiate(OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml")).eval()
    randomize([p for name, p in model.named_parameters() if ".lora_" in name or ".processor." in name], std=0.05)
    randomize(model.controlnet.parameters(), seed=2, std=0.02)
    return model


def _pipeline_inputs():
    """A 24×28 photo-like image (smooth noise) and a left-to-right disparity ramp, focus at its middle."""
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 24, 28, generator=generator), 3, 1, 1)[0]
    disparity = torch.linspace(0, 1, 56).view(1, 1, 56).expand(1, 48, 56).contiguous()
    return image, disparity


def _run_pipeline(model, precision, color_fix, device=None):
    # ×2 upsampling gives a 48×56 output; 32-px tiles every 24 px cut it into 4 overlapping tiles.
    pipeline = MagicBokehPipeline(
        model, None, tile_size=32, tile_stride=24, color_fix=color_fix, precision=precision, device=device,
        progress=False,
    )  # fmt: skip
    image, disparity = _pipeline_inputs()
    return pipeline.run(image, focus=0.5, K=16, scale=2, disparity=disparity)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_network_in_half_precision_is_within_rounding_of_float32(trained_tiny_model, dtype):
    images, defocus = inputs(batch=1)
    with torch.no_grad():
        reference = trained_tiny_model(images, defocus)
        half = copy.deepcopy(trained_tiny_model).to(dtype)(images, defocus)
    _assert_within_rounding(half, reference, dtype)


@pytest.mark.slow  # bf16 is emulated on most CPUs: ~3 s idle, 10+ s on a busy 2-core machine
@pytest.mark.parametrize("color_fix", ["adain", "wavelet"])
def test_pipeline_in_bf16_is_within_rounding_of_float32(trained_tiny_model, color_fix):
    reference = _run_pipeline(copy.deepcopy(trained_tiny_model), "fp32", color_fix).image
    half = _run_pipeline(copy.deepcopy(trained_tiny_model), "bf16", color_fix).image
    _assert_within_rounding(half, reference, torch.bfloat16)


class ExactNetwork(torch.nn.Module):
    """Computes in float32 whatever its weights' dtype and records what it receives: any difference between a bf16
    and an fp32 pipeline run can then only come from the pipeline's own steps."""

    stride = 4

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # cast by the pipeline: shows the network's precision
        self.calls: list[tuple[torch.dtype, torch.dtype, torch.dtype]] = []

    def forward(self, images, defocus):
        self.calls.append((images.dtype, defocus.dtype, self.anchor.dtype))
        # A pixel near the in-focus threshold (defocus ≤ 0.1) is darkened by a different amount on each side of it.
        in_focus = (defocus <= 0.1).float()
        return images.float() * (1 - 0.5 * defocus.float()) * (0.9 + 0.1 * in_focus)


@pytest.mark.parametrize("color_fix", ["adain", "wavelet", "none"])
def test_pipeline_steps_stay_float32_whatever_the_network_precision(color_fix):
    image, _ = _pipeline_inputs()
    # A plateau whose defocus, 0.1002, is just out of focus in float32 but rounds to bf16(0.1) in bf16.
    disparity = torch.full((1, 48, 56), 0.5)
    disparity[:, :, 28:] = 0.5 + 0.2004  # K = 16: defocus = 0.2004 / 2
    outputs = {}
    for precision in ("fp32", "bf16"):
        network = ExactNetwork()
        pipeline = MagicBokehPipeline(
            network, None, tile_size=32, tile_stride=24, color_fix=color_fix, precision=precision, progress=False
        )
        outputs[precision] = pipeline.run(image, focus=0.5, K=16, scale=2, disparity=disparity)
        weights_dtype = resolve_dtype(precision, torch.device("cpu"))
        assert network.calls and set(network.calls) == {(torch.float32, torch.float32, weights_dtype)}
    # The defocus map, tile blending and colour fix are float32 in both runs: the outputs are identical.
    assert outputs["bf16"].defocus.dtype == torch.float32
    torch.testing.assert_close(outputs["bf16"].defocus, outputs["fp32"].defocus, atol=0, rtol=0)
    torch.testing.assert_close(outputs["bf16"].image, outputs["fp32"].image, atol=0, rtol=0)


def test_bf16_is_allowed_on_the_cpu_and_fp16_needs_a_gpu():
    cpu = torch.device("cpu")
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) == torch.float32
    with pytest.raises(ParameterError, match="precision=fp16 needs a GPU"):
        resolve_dtype("fp16", cpu)
    assert resolve_dtype("fp16", torch.device("cuda")) == torch.float16


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_network_on_cuda_in_half_precision_is_within_rounding_of_float32(trained_tiny_model, dtype):
    # The reference is float32 on the CPU: CUDA float32 convolutions may use TF32, itself only fp16-accurate.
    images, defocus = inputs(batch=1)
    with torch.no_grad():
        reference = trained_tiny_model(images, defocus)
        half = copy.deepcopy(trained_tiny_model).to("cuda", dtype)(images.cuda(), defocus.cuda())
    _assert_within_rounding(half.cpu(), reference, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_pipeline_on_cuda_in_half_precision_is_within_rounding_of_float32(trained_tiny_model, dtype):
    reference = _run_pipeline(copy.deepcopy(trained_tiny_model), "fp32", "adain").image
    half = _run_pipeline(copy.deepcopy(trained_tiny_model), PRECISION_NAMES[dtype], "adain", device="cuda").image
    _assert_within_rounding(half, reference, dtype)
