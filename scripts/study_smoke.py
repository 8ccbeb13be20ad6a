"""What the smoke's final tables rest on: SR-only training, larger held-out sets, and the choice of colour fix.

python scripts/study_smoke.py                          # two smoke trainings; writes results/study_smoke.json
python scripts/study_smoke.py --override trainer.max_steps=20 --results none      # a quick look

Trains ``experiment=smoke`` twice with the same seed, in temporary run directories (``results/smoke.json`` is not
touched):

- ``smoke``: the recipe as it is (``python scripts/train.py experiment=smoke``);
- ``SR only``: the same run with ``trainer.schedule.pretrain_steps`` = ``trainer.max_steps``, i.e. every step is SR
  pre-training and no bokeh or SR-phase step runs (the defocus ControlNet and the bokeh LoRA stay at their
  zero-output initialisation).

Both final models are then scored (PSNR, dB) per task on the smoke's validation and test sets, and on two larger
sets drawn like them from other base seeds (``--larger-seeds``; ``--larger-length`` samples each): the network
alone, and followed by the inference pipeline's wavelet or AdaIN colour fix against the upsampled input
(``magicbokeh/inference/color_fix.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from magicbokeh.models import MagicBokehModel
from magicbokeh.training.train import FINAL_MODEL_DIR, train
from magicbokeh.training.validation import Validator
from magicbokeh.utils.cli import exit_on_user_error, set_offline_defaults
from magicbokeh.utils.config import compose_config
from magicbokeh.utils.results import Table, add_results_option, chosen_results_name, write_results

TASKS = ("bokeh", "sr")
# Table columns: (model variant, colour fix) → column title; the upsampled input comes first.
COLUMNS = {
    ("smoke", "none"): "smoke",
    ("smoke", "wavelet"): "smoke + wavelet fix",
    ("smoke", "adain"): "smoke + AdaIN fix",
    ("SR only", "none"): "SR only",
    ("SR only", "wavelet"): "SR only + wavelet fix",
}


def _config(overrides: list[str], run_root: Path, run_id: str):
    return compose_config(
        "train",
        ["experiment=smoke", *overrides, f"paths.output_dir={run_root}", f"run_id={run_id}", "results_name=null"],
    )


def evaluation_sets(cfg, larger_seeds: tuple[int, int], larger_length: int) -> dict[str, dict[str, list]]:
    """``{set name: {task: samples}}``: the smoke's validation and test sets, and larger copies from other seeds.
    The samples are drawn once and kept, so every model and colour fix sees the very same images."""
    nodes = {
        "validation": (cfg.data.val_bokeh, cfg.data.val_sr, {}),
        "test": (cfg.data.test_bokeh, cfg.data.test_sr, {}),
        f"validation-like, seed {larger_seeds[0]}": (
            cfg.data.val_bokeh,
            cfg.data.val_sr,
            {"seed": larger_seeds[0], "length": larger_length},
        ),
        f"test-like, seed {larger_seeds[1]}": (
            cfg.data.test_bokeh,
            cfg.data.test_sr,
            {"seed": larger_seeds[1], "length": larger_length},
        ),
    }
    sets = {}
    for name, (bokeh_node, sr_node, changes) in nodes.items():
        datasets = {"bokeh": instantiate(bokeh_node, **changes), "sr": instantiate(sr_node, **changes)}
        sets[name] = {task: [dataset[i] for i in range(len(dataset))] for task, dataset in datasets.items()}
    return sets


def score(model, samples: dict[str, list], color_fix: str, batch_size: int, device: torch.device) -> dict:
    """``{task: psnr}`` of ``model`` (or of the upsampled input when None) with ``color_fix`` applied."""
    with tempfile.TemporaryDirectory() as grids:
        validator = Validator(samples, batch_size=batch_size, out_dir=grids, color_fix=color_fix)
        if model is None:
            scores = validator.evaluate_upsampled_input(device)
            return {task: scores[f"{task}/psnr"] for task in TASKS}
        scores = validator.evaluate_model(model, device)
    key = "psnr" if color_fix == "none" else "psnr_color_fixed"
    return {task: scores[f"{task}/{key}"] for task in TASKS}


@exit_on_user_error
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="study_smoke.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override applied to both runs (repeatable), e.g. trainer.max_steps=20",
    )
    parser.add_argument(
        "--larger-seeds",
        type=int,
        nargs=2,
        default=[7001, 7002],
        help="base seeds of the larger validation-like and test-like sets",
    )
    parser.add_argument("--larger-length", type=int, default=128, help="samples per task in each larger set")
    parser.add_argument("--keep-runs", type=Path, default=None, help="run directories here instead of a temp dir")
    add_results_option(parser, "study_smoke")
    args = parser.parse_args(argv)
    set_offline_defaults()
    device = torch.device("cpu")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        run_root = args.keep_runs or Path(temporary)
        base = _config(args.override, run_root, "smoke")
        variants = {
            "smoke": args.override,
            "SR only": [*args.override, f"trainer.schedule.pretrain_steps={int(base.trainer.max_steps)}"],
        }
        training, models = {}, {}
        for variant, overrides in variants.items():
            run_id = variant.replace(" ", "_").lower()
            run_started = time.perf_counter()
            outcome = train(_config(overrides, run_root, run_id))
            training[variant] = {
                "overrides": overrides,
                "final_tables": outcome["scores"],
                "steps_per_s": outcome["steps_per_s"],
                "seconds": time.perf_counter() - run_started,
            }
            models[variant] = MagicBokehModel.from_pretrained(Path(outcome["run_dir"]) / FINAL_MODEL_DIR).eval()

        batch_size = int(base.trainer.validation.batch_size)
        scores = {}
        for set_name, samples in evaluation_sets(base, tuple(args.larger_seeds), args.larger_length).items():
            columns = {"upsampled input": score(None, samples, "none", batch_size, device)}
            for (variant, fix), title in COLUMNS.items():
                columns[title] = score(models[variant], samples, fix, batch_size, device)
            sizes = {task: len(samples[task]) for task in TASKS}
            scores[set_name] = {"samples": sizes, "psnr": columns}

    titles = ["upsampled input", *COLUMNS.values()]

    def table(set_names: list[str]) -> Table:
        rows = [
            [name, task, scores[name]["samples"][task], *(scores[name]["psnr"][title][task] for title in titles)]
            for name in set_names
            for task in TASKS
        ]
        return Table(["set", "task", "samples", *titles], rows, ["", "", "d", *[".2f"] * len(titles)])

    names = list(scores)
    tables = {"recipe": table(names[:2]), "larger_sets": table(names[2:])}
    print("\nPSNR (dB), smoke vs SR-only training, per colour fix:\n" + tables["recipe"].markdown())
    print("Larger sets drawn like them from other seeds:\n" + tables["larger_sets"].markdown())
    name = chosen_results_name(args.results)
    if name:
        figures = {
            "settings": {
                "overrides": args.override,
                "larger_seeds": args.larger_seeds,
                "larger_length": args.larger_length,
                "max_steps": int(base.trainer.max_steps),
            },
            "training": training,
            "scores": scores,
            "seconds": time.perf_counter() - started,
        }
        path = write_results(
            name,
            figures,
            tables=tables,
            seed=int(base.seed),
            title="smoke recipe vs SR-only training, on the validation, test and larger held-out sets, per colour fix",
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
