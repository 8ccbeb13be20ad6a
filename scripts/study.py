"""Run an ablation study: every (variant, seed) trained as one sweep, evaluated, tabulated (configs/study.yaml).

python scripts/study.py study=ablation_fama scale=smoke        # tiny model, synthetic data, CPU
python scripts/study.py study=ablation_depth                   # paper scale (paths.* as for training)
python scripts/study.py study=ablation_strategy launcher=slurm "launcher_overrides=['hydra.launcher.partition=gpu']"
python scripts/study.py study=ablation_fama scale=smoke variants=[hard,none] seeds=[0,1]   # a subset
python scripts/study.py study=ablation_fama scale=smoke stages=[table]   # the table again from the scores on disk
A rerun of the same command resumes: finished runs and scores are kept, interrupted runs continue from their last
checkpoint (magicbokeh/training/study.py).
"""

from __future__ import annotations

import signal
import sys

from omegaconf import DictConfig

from magicbokeh.utils.cli import hydra_main


@hydra_main("study")
def main(cfg: DictConfig) -> None:
    from magicbokeh.training.study import run_study, study_from_config

    study = study_from_config(cfg)
    run_study(
        study,
        list(cfg.stages),
        launcher=str(cfg.launcher),
        launcher_overrides=[str(o) for o in cfg.launcher_overrides],
        eval_launcher=str(cfg.eval_launcher),
        eval_launcher_overrides=[str(o) for o in cfg.eval_launcher_overrides],
        results=None if cfg.results is None else str(cfg.results),
        figure=None if cfg.figure is None else str(cfg.figure),
    )


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM (kill, a scheduler's time limit) as SystemExit: the running stage records its time and stops its
    sweep's jobs on the way out (magicbokeh.training.study)."""
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    main()
