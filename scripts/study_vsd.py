"""What the optional latent VSD regulariser costs per training step, on the smoke's tiny network.

python scripts/study_vsd.py                        # writes results/study_vsd.json
python scripts/study_vsd.py --steps 10 --repeats 1 --results none

Runs ``train()`` of ``experiment=smoke`` for ``--steps`` SR pre-training steps, without and with
``trainer.vsd.enabled=true trainer.phases.sr_pretrain.vsd_weight=1.0``,
alternating the two ``--repeats`` times in the same process so that both see the same machine load, and reports the
median seconds per step of each and their ratio. A step is what ``scripts/train.py`` runs: batch drawing and
degradation, forward, loss, backward, clipping and the update; with VSD also the frozen "real" and the LoRA "fake"
score passes and the fake score's own update. On the tiny model both scores are random copies of its UNet (no SD2.1
behind it), so the figure is the code path's cost at this size, not SD2.1's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from magicbokeh.training.train import train
from magicbokeh.utils.cli import exit_on_user_error, set_offline_defaults
from magicbokeh.utils.config import compose_config
from magicbokeh.utils.results import Table, add_results_option, chosen_results_name, write_results

VSD_OVERRIDES = ["trainer.vsd.enabled=true", "trainer.phases.sr_pretrain.vsd_weight=1.0"]


def seconds_per_step(steps: int, extra: list[str], run_root: str, run_id: str) -> float:
    """Mean wall time of one training step over a ``steps``-step SR pre-training run (``train()``'s own timing)."""
    overrides = [
        "experiment=smoke",
        f"paths.output_dir={run_root}",
        f"run_id={run_id}",
        "results_name=null",
        f"trainer.max_steps={steps}",
        f"trainer.schedule.pretrain_steps={steps}",
        "trainer.val_every=0",
        "trainer.checkpoint_every=0",
        # The run's own held-out scoring is not what is timed: keep it small.
        "data.val_bokeh.length=4",
        "data.val_sr.length=4",
        *extra,
    ]
    return 1.0 / train(compose_config("train", overrides))["steps_per_s"]


@exit_on_user_error
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="study_vsd.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="SR pre-training steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant, alternating")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override applied to every run (repeatable)",
    )
    add_results_option(parser, "study_vsd")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("need --steps ≥ 1 and --repeats ≥ 1")
    set_offline_defaults()

    variants = {"without VSD": [], "with VSD": VSD_OVERRIDES}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_root:
        for repeat in range(args.repeats):
            for index, (name, extra) in enumerate(variants.items()):
                run_id = f"r{repeat}_{index}"
                seconds[name].append(seconds_per_step(args.steps, [*args.override, *extra], run_root, run_id))
                print(f"{name}, run {repeat + 1}: {seconds[name][-1]:.3f} s/step")
    median = {name: statistics.median(values) for name, values in seconds.items()}
    ratio = median["with VSD"] / median["without VSD"]
    rows = [
        [name, args.repeats, median[name], 1 / median[name], median[name] / median["without VSD"]] for name in variants
    ]
    table = Table(
        ["training step", "runs", "s/step (median)", "steps/s", "× without VSD"], rows, ["", "d", ".3f", ".2f", ".2f"]
    )
    print("\nSmoke network, SR pre-training steps:\n" + table.markdown())
    name = chosen_results_name(args.results)
    if name:
        figures = {
            "settings": {
                "steps": args.steps,
                "repeats": args.repeats,
                "overrides": args.override,
                "vsd_overrides": VSD_OVERRIDES,
            },
            "seconds_per_step": seconds,
            "median_seconds_per_step": median,
            "ratio": ratio,
            "seconds": time.perf_counter() - started,
        }
        path = write_results(
            name,
            figures,
            tables={"step_time": table},
            seed=int(compose_config("train", ["experiment=smoke"]).seed),
            title="latent VSD regulariser: training-step time with and without it, smoke network, same run",
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
