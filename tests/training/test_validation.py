"""Validator: scores per task, the upsampled-input baseline, and the zeroed-defocus readout of the final table."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch import nn

from magicbokeh.errors import ConfigError
from magicbokeh.evaluation.metrics import psnr
from magicbokeh.training.validation import Validator, labelled_grid, write_final_report


class _BlurWhereDefocused(nn.Module):
    """A stand-in model whose output depends on the defocus map: input where defocus is 0, target where it is 1."""

    def __init__(self, targets: torch.Tensor) -> None:
        super().__init__()
        self.targets = targets

    def forward(self, lq: torch.Tensor, defocus: torch.Tensor) -> torch.Tensor:
        return lq * (1 - defocus) + self.targets[: lq.shape[0]] * defocus


def _samples(count: int = 4, size: int = 8) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    samples = []
    for index in range(count):
        target = torch.rand(3, size, size, generator=generator)
        lq = (target + 0.2 * torch.randn(3, size, size, generator=generator)).clamp(0, 1)
        defocus = torch.rand(1, size, size, generator=generator)
        samples.append({"lq": lq, "target": target, "defocus": defocus, "task": "bokeh", "meta": {"index": index}})
    return samples


def test_zero_defocus_readout_isolates_the_condition(tmp_path):
    samples = _samples()
    targets = torch.stack([s["target"] for s in samples])
    validator = Validator({"bokeh": samples}, batch_size=4, out_dir=tmp_path / "val")
    model = _BlurWhereDefocused(targets)
    device = torch.device("cpu")

    baseline = validator.evaluate_upsampled_input(device)
    with_condition = validator.evaluate_model(model, device)
    zeroed = validator.evaluate_model(model, device, zero_defocus=True)

    lq = torch.stack([s["lq"] for s in samples])
    assert abs(baseline["bokeh/psnr"] - psnr(lq, targets).mean().item()) < 1e-5
    assert abs(zeroed["bokeh/psnr"] - baseline["bokeh/psnr"]) < 1e-5  # zeroed map: the model returns its input
    assert with_condition["bokeh/psnr"] > zeroed["bokeh/psnr"] + 1.0

    columns = {"upsampled input": baseline, "trained, defocus zeroed": zeroed}
    tables = write_final_report(tmp_path, {"validation": columns, "test": columns}, ["bokeh"], {"test": "Test set"})
    assert set(tables) == {"validation", "test"}
    assert tables["test"].columns == ["task (psnr)", "upsampled input", "trained, defocus zeroed"]
    assert tables["test"].rows == [["bokeh", baseline["bokeh/psnr"], zeroed["bokeh/psnr"]]]
    saved = json.loads((tmp_path / "final_eval.json").read_text())
    assert saved == {"validation": columns, "test": columns}
    report = (tmp_path / "final_eval.md").read_text()
    assert report.startswith("validation\n\n| task (psnr) |") and "\nTest set\n\n| task (psnr) |" in report
    assert f"| bokeh | {baseline['bokeh/psnr']:.2f} | {zeroed['bokeh/psnr']:.2f} |" in report


class _TintedTarget(nn.Module):
    """Returns the target with a colour cast: the drift a colour fix against the input is meant to remove."""

    def __init__(self, targets: torch.Tensor, tint: tuple[float, float, float]) -> None:
        super().__init__()
        self.targets, self.tint = targets, torch.tensor(tint).view(1, 3, 1, 1)

    def forward(self, lq: torch.Tensor, defocus: torch.Tensor) -> torch.Tensor:
        return self.targets[: lq.shape[0]] + self.tint


@pytest.mark.parametrize("method", ["adain", "wavelet"])
def test_color_fixed_scores_remove_a_cast_and_leave_the_input_alone(tmp_path, method):
    samples = _samples(size=16)
    for sample in samples:  # a gentle LQ: the input's colours are the target's
        sample["lq"] = (sample["target"] + 0.05 * torch.randn_like(sample["target"])).clamp(0, 1)
    targets = torch.stack([s["target"] for s in samples])
    validator = Validator({"bokeh": samples}, batch_size=2, out_dir=tmp_path / "val", color_fix=method)
    device = torch.device("cpu")

    tinted = validator.evaluate_model(_TintedTarget(targets, (0.0, 0.0, 0.15)), device, step=1)
    assert tinted["bokeh/psnr_color_fixed"] > tinted["bokeh/psnr"] + 3.0
    # A model that returns the upsampled input: the fix (against that same input) changes nothing.
    identity = validator.evaluate_model(_BlurWhereDefocused(targets), device, zero_defocus=True)
    assert abs(identity["bokeh/psnr_color_fixed"] - identity["bokeh/psnr"]) < 0.01
    # The input baseline has no fixed variant; the grid gains a colour-fixed panel: input | output | fixed | target.
    assert set(validator.evaluate_upsampled_input(device)) == {"bokeh/psnr"}
    with Image.open(validator.grid_path("bokeh", 1)) as grid:  # 16 px panels enlarged ×6 to 96 px, plus labels
        width, height = grid.size
        assert width > 4 * 96 and height > 4 * 96 and (width - 4 * 96) < 200 and (height - 4 * 96) < 60


def test_grid_panels_are_labelled_and_unchanged():
    panels = torch.rand(2, 3, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    grid = labelled_grid(panels, ["input (bicubic)", "output", "target"], ["#0: 20.00 dB", "#1: 21.00 dB"], "bokeh")
    _, height, width = grid.shape
    factor = 8  # 12 px wide panels enlarged to ≥ 96 px
    left, top = width - 3 * 12 * factor, height - 2 * 8 * factor
    assert left > 40 and top > 10  # room for the row labels and the headings
    dark = grid.mean(0) < 0.5
    assert dark[:top, left:].any() and dark[top:, :left].any()  # text in the heading strip and the label column
    panel = grid[:, top + 8 * factor : top + 16 * factor, left + 12 * factor : left + 24 * factor]  # row 1, output
    expected = torch.nn.functional.interpolate(panels[1, 1][None], scale_factor=factor, mode="nearest")[0]
    assert (panel - expected).abs().max() <= 0.5 / 255  # the pixels themselves, only quantised to 8 bits


def test_unknown_color_fix_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="color_fix"):
        Validator({"bokeh": _samples()}, batch_size=2, out_dir=tmp_path, color_fix="histogram")
