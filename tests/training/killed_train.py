"""``scripts/train.py`` that dies like a killed job: ``os._exit`` the moment the trainer is about to take step
``KILL_AT_STEP`` (every rank reaches it together), with no clean-up, no final save and no tracker shutdown.

    torchrun --standalone --nproc_per_node 2 tests/training/killed_train.py experiment=smoke ...   (KILL_AT_STEP=5)
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from magicbokeh.training.trainer import Trainer

KILLED_EXIT_CODE = 137  # what a shell reports for SIGKILL

_kill_at_step = int(os.environ["KILL_AT_STEP"])
_train_step = Trainer.train_step


def _train_step_or_die(self, phase):
    if self.step == _kill_at_step:
        os._exit(KILLED_EXIT_CODE)
    return _train_step(self, phase)


Trainer.train_step = _train_step_or_die
runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "train.py"), run_name="__main__")
