"""Scoring on fixed held-out sets: PSNR (and LPIPS) per task, an image grid, and the final comparison tables.

The validation sets are the data config's ``val_bokeh`` / ``val_sr`` datasets, scored during training and used to
choose settings; the test sets (``test_bokeh`` / ``test_sr``, where the data config has them) are scored only at the
start and the end of a run, and reported beside them. Both are seeded per sample, so every pass (and every run with
the same config) sees exactly the same images. Scoring runs on the main process only: the sets are small, and the
model is unwrapped so no collective call is involved.

With ``color_fix`` set, every model output is also scored after the inference pipeline's colour correction against
the upsampled input (:mod:`magicbokeh.inference.color_fix`), under ``<task>/<metric>_color_fixed``: the network
alone and the network as ``scripts/render.py`` runs it are then both on record.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from magicbokeh.data.io import write_image
from magicbokeh.data.transforms import resize_images
from magicbokeh.errors import ConfigError
from magicbokeh.evaluation.metrics import psnr
from magicbokeh.inference.color_fix import COLOR_FIX_METHODS, color_fix
from magicbokeh.training.data_streams import collate_samples
from magicbokeh.training.losses import lpips_float32
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.results import Table, write_results

logger = get_logger(__name__)

COLOR_FIXED_SUFFIX = "_color_fixed"
"""Metric-name suffix of the scores taken after the colour fix (``sr/psnr`` → ``sr/psnr_color_fixed``)."""
# How the final report names each evaluation set: the validation sets choose settings, the test sets only report.
SET_HEADINGS = {
    "validation": "Validation set (data.val_bokeh, data.val_sr: scored during training, used to choose settings)",
    "test": "Test set (data.test_bokeh, data.test_sr: scored only before and after training, never to choose)",
}


class Validator:
    """Score a model on fixed held-out sets, one per task (``{"bokeh": dataset, "sr": dataset}``)."""

    def __init__(
        self,
        datasets: Mapping[str, Dataset],
        batch_size: int,
        out_dir: str | os.PathLike,
        lpips_model: nn.Module | None = None,
        grid_rows: int = 4,
        color_fix: str = "none",
    ) -> None:
        if color_fix not in COLOR_FIX_METHODS:
            raise ConfigError(f"validation color_fix must be one of {COLOR_FIX_METHODS}, got {color_fix!r}")
        self.datasets = dict(datasets)
        self.batch_size = int(batch_size)
        self.out_dir = Path(out_dir)
        self.lpips_model = lpips_model
        self.grid_rows = int(grid_rows)
        self.color_fix = color_fix

    def _batches(self, task: str):
        loader = DataLoader(self.datasets[task], batch_size=self.batch_size, shuffle=False, collate_fn=collate_samples)
        yield from loader

    @torch.no_grad()
    def _score(
        self, predict, task: str, device: torch.device, fix_colors: bool = True
    ) -> tuple[dict[str, float], torch.Tensor | None]:
        """Mean PSNR (and LPIPS) of ``predict``'s outputs on ``task``'s set, plus the colour-fixed variants when
        a colour fix is configured and ``fix_colors``; the grid's panels (``rows×kinds×3×H×W``) are input | output
        [| fixed] | target."""
        scores: dict[str, list[torch.Tensor]] = {}
        rows = []
        fixing = fix_colors and self.color_fix != "none"
        for batch in self._batches(task):
            lq = batch["lq"].to(device)
            target = batch["target"].to(device)
            output = predict(lq, batch["defocus"].to(device), target.shape[-2:]).float().clamp(0, 1)
            upsampled = resize_images(lq, target.shape[-2:])
            variants = {"": output}
            if fixing:
                # The pipeline's correction, against the same bicubic upsampling it uses (on CPU, as there).
                variants[COLOR_FIXED_SUFFIX] = color_fix(output.cpu(), upsampled.cpu(), self.color_fix).to(device)
            for suffix, images in variants.items():
                scores.setdefault(f"psnr{suffix}", []).append(psnr(images, target).cpu())
                if self.lpips_model is not None:
                    self.lpips_model.to(device)
                    distance = lpips_float32(self.lpips_model, images, target)
                    scores.setdefault(f"lpips{suffix}", []).append(distance.flatten().cpu())
            if sum(len(r) for r in rows) < self.grid_rows:
                rows.append(torch.stack([upsampled, *variants.values(), target], dim=1)[: self.grid_rows].cpu())
        # Validation runs outside autocast (float32 throughout); a float32 mean of per-image scores over a held-out
        # set of this size loses nothing that two printed decimals would show.
        metrics = {name: torch.cat(values).mean().item() for name, values in scores.items()}
        grid = torch.cat(rows)[: self.grid_rows] if rows else None
        return metrics, grid

    def _write_grid(self, path: Path, panels: torch.Tensor, task: str, step: int) -> None:
        """The grid of one task: a column per panel kind, a row per held-out sample, each labelled."""
        columns = ["input (bicubic)", "output", *(["colour-fixed"] if panels.shape[1] == 4 else []), "target"]
        output_psnr = psnr(panels[:, 1], panels[:, -1])
        rows = [f"#{index}: {value:.2f} dB" for index, value in enumerate(output_psnr.tolist())]
        write_image(path, labelled_grid(panels, columns, rows, title=f"{task}, step {step} (output PSNR per row)"))

    def evaluate_model(
        self, model: nn.Module, device: torch.device, step: int | None = None, zero_defocus: bool = False
    ) -> dict[str, float]:
        """``{"<task>/psnr": …, "<task>/lpips": …}``; with ``step`` also writes ``val/step_N_<task>.png`` grids
        (labelled columns input | output [| colour-fixed] | target, one row per sample with its output PSNR).

        ``zero_defocus=True`` feeds an all-zero defocus map (pure SR) instead of the sample's: the drop it causes on
        the bokeh set is how much of the score the defocus condition is responsible for.
        """
        was_training = model.training
        model.eval()
        results = {}

        def predict(lq, defocus, size):
            return model(lq, torch.zeros_like(defocus) if zero_defocus else defocus)

        try:
            for task in self.datasets:
                metrics, grid = self._score(predict, task, device)
                results.update({f"{task}/{name}": value for name, value in metrics.items()})
                if step is not None and grid is not None:
                    self._write_grid(self.grid_path(task, step), grid, task, step)
        finally:
            model.train(was_training)
        return results

    def evaluate_upsampled_input(self, device: torch.device) -> dict[str, float]:
        """Scores of the bicubic-upsampled LQ input itself (the "do nothing" baseline)."""
        results = {}
        for task in self.datasets:
            # No colour-fixed variant: the input corrected against itself is the input.
            metrics, _ = self._score(lambda lq, defocus, size: resize_images(lq, size), task, device, fix_colors=False)
            results.update({f"{task}/{name}": value for name, value in metrics.items()})
        return results

    def grid_path(self, task: str, step: int) -> Path:
        return self.out_dir / f"step_{step:06d}_{task}.png"


def labelled_grid(
    panels: torch.Tensor,
    column_titles: Sequence[str],
    row_titles: Sequence[str],
    title: str = "",
    min_panel_px: int = 96,
) -> torch.Tensor:
    """``R×C×3×H×W`` panels in [0, 1] → one ``3×H'×W'`` image: a title line, a heading over each column, a label
    left of each row. Small panels are enlarged by an integer factor (nearest neighbour, pixels stay visible) to at
    least ``min_panel_px`` wide, so the headings fit and the images can be judged by eye."""
    from PIL import Image, ImageDraw, ImageFont

    num_rows, num_columns, _, height, width = panels.shape
    factor = max(1, math.ceil(min_panel_px / width))
    panels = F.interpolate(panels.flatten(0, 1), scale_factor=factor, mode="nearest").unflatten(0, panels.shape[:2])
    height, width = height * factor, width * factor
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = 4 + max(measure.textbbox((0, 0), text, font=font)[3] for text in [title, *column_titles, *row_titles])
    label_width = 8 + max(measure.textlength(text, font=font) for text in row_titles)
    top, left = 2 * line, int(label_width)
    canvas = Image.new("RGB", (left + num_columns * width, top + num_rows * height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill="black", font=font)
    for column, text in enumerate(column_titles):
        draw.text((left + column * width + 4, line + 2), text, fill="black", font=font)
    pixels = (panels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    for row, text in enumerate(row_titles):
        draw.text((4, top + row * height + height // 2 - line // 2), text, fill="black", font=font)
        for column in range(num_columns):
            canvas.paste(Image.fromarray(pixels[row, column]), (left + column * width, top + row * height))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def comparison_table(columns: Mapping[str, Mapping[str, float]], tasks: list[str], metric: str = "psnr") -> Table:
    """One row per task, one column per evaluated model (e.g. input / initialisation / trained); a missing score is
    NaN (printed "–"). The same :class:`Table` is printed, saved in the run directory and, for a run with
    ``results_name``, rendered in the README from its results file."""
    names = list(columns)
    rows = [[task, *(columns[name].get(f"{task}/{metric}", float("nan")) for name in names)] for task in tasks]
    return Table([f"task ({metric})", *names], rows, ["", *[".2f"] * len(names)])


def write_final_report(
    run_dir: str | os.PathLike,
    sets: Mapping[str, Mapping[str, Mapping[str, float]]],
    tasks: list[str],
    headings: Mapping[str, str] | None = None,
) -> dict[str, Table]:
    """Write ``final_eval.json`` (``{set: {column: {metric: value}}}``) and ``final_eval.md`` (one heading and table
    per evaluation set, e.g. ``validation`` and ``test``) in the run directory; returns the tables by set."""
    run_dir = Path(run_dir)
    headings = dict(headings or {})
    tables = {name: comparison_table(columns, tasks) for name, columns in sets.items()}
    document = {name: {column: dict(scores) for column, scores in columns.items()} for name, columns in sets.items()}
    atomic_write_text(run_dir / "final_eval.json", json.dumps(document, indent=1))
    text = "\n".join(f"{headings.get(name, name)}\n\n{table.markdown()}" for name, table in tables.items())
    atomic_write_text(run_dir / "final_eval.md", text)
    return tables


def final_evaluation(
    evaluation_sets: Mapping[str, tuple[Validator, Mapping[str, float]]],
    model: nn.Module,
    device: torch.device,
    run_dir: str | os.PathLike,
) -> dict[str, dict[str, dict[str, float]]]:
    """Score the trained model on each ``{set name: (validator, its initial scores)}`` (``validation``, ``test``);
    print and save one table per set (:func:`write_final_report`); returns ``{set: {column: {metric: value}}}``."""
    sets: dict[str, dict[str, dict[str, float]]] = {}
    fixes = set()
    for name, (validator, init_scores) in evaluation_sets.items():
        trained = validator.evaluate_model(model, device)
        columns = {
            "upsampled input": validator.evaluate_upsampled_input(device),
            "initialisation": dict(init_scores),
            "trained": trained,
            # Same model, defocus map zeroed: on the bokeh set, the gap to "trained" is what the condition contributes.
            "trained, defocus zeroed": validator.evaluate_model(model, device, zero_defocus=True),
        }
        if validator.color_fix != "none":
            fix = f"{validator.color_fix} colour fix"
            columns[f"initialisation + {fix}"] = _color_fixed_scores(init_scores)
            columns[f"trained + {fix}"] = _color_fixed_scores(trained)
            fixes.add(validator.color_fix)
        sets[name] = columns
    tasks = list(next(iter(evaluation_sets.values()))[0].datasets)
    headings = {name: f"{SET_HEADINGS.get(name, name)}, PSNR (dB), higher is better:" for name in sets}
    tables = write_final_report(run_dir, sets, tasks, headings)
    for name, table in tables.items():
        print(f"\n{headings[name]}\n{table.markdown()}", end="")
    for fix in sorted(fixes):
        print(
            f'("+ {fix} colour fix": the network\'s output corrected against the upsampled input, as the inference'
            f" pipeline does with color_fix={fix}; the other columns are the network alone)"
        )
    print(f"(saved in {Path(run_dir) / 'final_eval.md'})")
    return sets


def _color_fixed_scores(scores: Mapping[str, float]) -> dict[str, float]:
    """``{"sr/psnr_color_fixed": v}`` → ``{"sr/psnr": v}``: the colour-fixed scores as a column of their own."""
    return {
        key.removesuffix(COLOR_FIXED_SUFFIX): value for key, value in scores.items() if key.endswith(COLOR_FIXED_SUFFIX)
    }


def write_final_results(
    name: str,
    sets: Mapping[str, Mapping[str, Mapping[str, float]]],
    tasks: list[str],
    timing: Mapping[str, float],
    experiment: str,
    seed: int,
) -> Path:
    """``results/<name>.json`` (:func:`magicbokeh.utils.results.write_results`): one table per evaluation set, as
    printed, and a ``run`` table with the run's step count and wall times."""
    tables = {set_name: comparison_table(columns, tasks) for set_name, columns in sets.items()}
    tables["run"] = Table(
        ["steps", "training (s)", "whole run (s)", "steps/s"],
        [[timing["steps"], timing["training_seconds"], timing["run_seconds"], timing["steps_per_s"]]],
        ["d", ".0f", ".0f", ".2f"],
    )
    path = write_results(
        name,
        {**{set_name: dict(columns) for set_name, columns in sets.items()}, "timing": dict(timing)},
        title=f"final evaluation of experiment={experiment}: PSNR (dB) per set and task, and the run's wall time",
        tables=tables,
        seed=seed,
        notes="validation: the sets the settings were chosen on; test: scored only before and after training. "
        "training = the optimisation steps; whole run = train() from building the model to the final tables.",
    )
    print(f"(results file {path})")
    return path
