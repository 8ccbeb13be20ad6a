"""Mixed precision on CPU: bf16 autocast, fp16 autocast + GradScaler, the float32 x₀, and non-finite updates.

accelerate runs ``mixed_precision="fp16"`` on a CPU as plain float32 (no autocast, no GradScaler), so the fp16 tests
wire it as accelerate does on a GPU: ``native_amp`` on (autocast to float16 in prepared forwards and
``accelerator.autocast()``) and a CPU ``torch.amp.GradScaler`` set before ``prepare`` (``accelerator.backward``
scales the loss, prepared optimizers step through the scaler).

Updates are compared with plain SGD (lr 1), whose update is the clipped gradient itself: AdamW's first step is
≈ lr·sign(g), which would hide a wrong gradient magnitude.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from hydra.utils import instantiate

from magicbokeh.errors import TrainingDivergedError
from magicbokeh.training.tracking import JsonlTracker, read_metrics
from magicbokeh.training.trainer import PhaseSettings
from magicbokeh.utils.config import compose_config
from tests.training.test_trainer import _trainer

# Relative error ‖Δθ − Δθ_fp32‖ / ‖Δθ_fp32‖ of one update allowed per precision. Measured on the tiny network (one
# step per phase, seed 0): bf16 0.031–0.045 (the network's own 8-bit-mantissa rounding), fp16 0.0040–0.0044. The base
# commit, which let accelerate's clip_grad_norm_ unscale every optimizer, gave fp16 0.944 (sr_pretrain) and 1.000
# (sr): the SR LoRA, shared by the sr_pretrain and sr optimizers, was divided by the loss scale twice.
UPDATE_TOLERANCE = {"bf16": 0.1, "fp16": 0.02}
SGD_PHASES = {
    name: PhaseSettings(data=data, lr=1.0, lpips_weight=0.0)
    for name, data in (("sr_pretrain", "sr"), ("bokeh", "bokeh"), ("sr", "sr"))
}


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change: reset it around each test."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def _accelerator(precision: str, run_dir=None) -> Accelerator:
    AcceleratorState._reset_state(True)
    log_with = [JsonlTracker(run_dir)] if run_dir is not None else None
    if precision != "fp16":
        return Accelerator(cpu=True, mixed_precision=precision, log_with=log_with)
    accelerator = Accelerator(cpu=True, mixed_precision="fp16", log_with=log_with)
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu")
    return accelerator


def _sgd(parameters, lr):
    return torch.optim.SGD(parameters, lr=lr)


def _tiny_model():
    torch.manual_seed(0)
    return instantiate(compose_config("train", ["model=tiny"]).model)  # t = 999, as SD2.1-base


def _one_update(base_model, precision: str, phase: str, run_dir) -> torch.Tensor:
    """Δθ of ``phase``'s parameters after one trainer step of a copy of ``base_model``."""
    model = copy.deepcopy(base_model)
    trainer = _trainer(
        run_dir, model=model, size=16, phases=SGD_PHASES, accelerator=_accelerator(precision),
        optimizer_factory=_sgd, start_trackers=False,
    )  # fmt: skip
    names = model.phase_parameter_names(phase)
    before = {name: param.detach().clone() for name, param in model.named_parameters() if name in names}
    trainer.train_step(phase)
    after = dict(model.named_parameters())
    return torch.cat([(after[name].detach() - before[name]).flatten() for name in names])


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["sr_pretrain", "bokeh", "sr"])
def test_one_step_under_mixed_precision_updates_like_float32(tmp_path, phase):
    base = _tiny_model()
    reference = _one_update(base, "no", phase, tmp_path / "fp32")
    assert reference.norm() > 0
    for precision, tolerance in UPDATE_TOLERANCE.items():
        update = _one_update(base, precision, phase, tmp_path / precision)
        error = ((update - reference).norm() / reference.norm()).item()
        assert error < tolerance, (phase, precision, error)


def test_x0_is_float32_under_bf16_autocast():
    """ẑ₀ = (z − √(1−ᾱ)·ε̂)/√ᾱ at t = 999 from bf16 z and ε̂ (what the autocast network produces), against float64
    on the same inputs: max error ≤ 1e-4 on unit-std latents (measured 1e-5). The base commit computed it in
    bf16: RMS error 0.089, max 0.71."""
    model = _tiny_model()
    generator = torch.Generator().manual_seed(0)
    latents, noise_pred = (torch.randn(4, 4, 32, 32, generator=generator).bfloat16() for _ in range(2))
    alpha_bar = model.alphas_cumprod[999].double()
    exact = (latents.double() - (1 - alpha_bar).sqrt() * noise_pred.double()) / alpha_bar.sqrt()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x0 = model.x0_from_noise(latents, noise_pred)
    error = (x0.double() - exact).abs()
    assert error.max().item() <= 1e-4, (error.pow(2).mean().sqrt().item(), error.max().item())
    assert x0.dtype == torch.float32


def _inf_gradient_hook(model, phase: str, steps: set[int], counter: list[int]):
    """Make the first parameter of ``phase`` get an inf gradient on the listed (0-based) backward calls."""
    param = model.trainable_parameters(phase)[0]

    def hook(grad):
        counter[0] += 1
        return grad * math.inf if counter[0] - 1 in steps else grad

    return param.register_hook(hook)


@pytest.mark.parametrize("precision", ["no", "fp16"])
def test_inf_gradient_skips_the_update_and_leaves_everything_untouched(tmp_path, precision):
    accelerator = _accelerator(precision, tmp_path)
    trainer = _trainer(tmp_path, accelerator=accelerator, max_steps=4)
    model = accelerator.unwrap_model(trainer.model)
    trainer.train_step("sr_pretrain")  # one good update first: the optimizer has state to keep
    trainer.step += 1
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer_state = copy.deepcopy(trainer.optimizers["sr_pretrain"].state_dict())
    lr_epoch = trainer.schedulers["sr_pretrain"].last_epoch
    scale = accelerator.scaler.get_scale() if accelerator.scaler is not None else None

    handle = _inf_gradient_hook(model, "sr_pretrain", {0}, [0])
    parts = trainer.train_step("sr_pretrain")
    handle.remove()
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, weights[name])]
    assert not changed, changed[:3]
    assert parts["skipped_steps"] == 1 and not math.isfinite(parts["grad_norm"])
    after = trainer.optimizers["sr_pretrain"].state_dict()
    assert all(
        torch.equal(after["state"][key][name], value)
        for key, state in optimizer_state["state"].items()
        for name, value in state.items()
    )
    assert trainer.schedulers["sr_pretrain"].last_epoch == lr_epoch
    if scale is not None:  # the GradScaler still updated: the overflow lowered the loss scale
        assert accelerator.scaler.get_scale() == scale * accelerator.scaler.get_backoff_factor()
    assert all(p.grad is None for p in model.parameters())
    trainer.step += 1
    parts = trainer.train_step("sr_pretrain")  # and the next update goes through again
    assert parts["skipped_steps"] == 1 and math.isfinite(parts["grad_norm"])
    assert trainer.progress.consecutive_skips == 0


class _OverflowAt:
    """A phase loss that turns into inf on the listed (0-based) trainer steps, as an fp16 overflow would."""

    def __init__(self, loss, trainer, bad_steps: set[int]) -> None:
        self.loss, self.trainer, self.bad_steps = loss, trainer, bad_steps

    def __call__(self, images, targets):
        total, parts = self.loss(images, targets)
        return (total * math.inf if self.trainer.step in self.bad_steps else total), parts


def test_skipped_steps_are_logged_and_too_many_in_a_row_stop_training(tmp_path):
    trainer = _trainer(tmp_path, max_steps=8, max_consecutive_skips=3)
    # Step 0 overflows alone (the next update resets the count), then steps 2, 3, 4 in a row.
    trainer.losses = {phase: _OverflowAt(loss, trainer, {0, 2, 3, 4}) for phase, loss in trainer.losses.items()}
    with pytest.raises(TrainingDivergedError, match="3 consecutive updates"):
        trainer.fit()
    trainer.accelerator.end_training()
    records = [r for r in read_metrics(tmp_path) if "phase" in r]
    assert [r["skipped_steps"] for r in records] == [1, 1, 2, 3]  # step 5 raised before it was logged
    assert records[0]["loss"] is None  # the overflowed loss is logged (as JSON null)
    assert trainer.progress.consecutive_skips == 3


def test_lpips_is_float32_under_bf16_autocast():
    """LPIPS of nearly equal images cancels: computed under bf16 autocast it was 6.6× the float32 value here (and its
    gradient pointed elsewhere); lpips_float32 gives the float32 value wherever it is called."""
    from magicbokeh.models.interface import images_to_pixel_values
    from magicbokeh.training.losses import build_lpips, lpips_float32

    torch.manual_seed(0)
    model = build_lpips("alex", random_backbone=True)
    images = torch.rand(2, 3, 64, 64)
    nearly = (images + 1e-3 * torch.randn_like(images)).clamp(0, 1)
    exact = model(images_to_pixel_values(nearly), images_to_pixel_values(images))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        guarded = lpips_float32(model, nearly, images)
        unguarded = model(images_to_pixel_values(nearly), images_to_pixel_values(images))
    torch.testing.assert_close(guarded, exact, rtol=1e-5, atol=1e-9)
    assert (unguarded.float() - exact).abs().max() > exact.abs().max()  # what the guard prevents
