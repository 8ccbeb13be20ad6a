"""Training checkpoints through accelerate: ``save_state`` / ``load_state`` in atomic ``step_N`` folders, last K kept.

accelerate writes what it owns: every prepared optimizer, the fp16 GradScaler, and **every rank's** RNG states
(Python, NumPy, torch CPU and accelerator device), so a multi-process run resumes exactly. What the loop owns
beside the weights (its step counter, each data stream's position, each phase's LR schedule, the VSD noise
generator) is registered with ``accelerator.register_for_checkpointing`` as a *named state*: any object with
``state_dict()`` / ``load_state_dict()`` whose state is plain data (numbers, strings, lists, dicts, tensors).

Weights never go through accelerate's model saving: a full SD2.1 UNet + VAE + ControlNet state is 3+ GB per
checkpoint. Save/load pre-hooks write each prepared module's *trainable* tensors instead (``model.safetensors``:
:meth:`MagicBokehModel.checkpoint_state_dict`, which adds the base weights only for a random tiny model;
``vsd.safetensors`` for the VSD fake score) and take those modules off accelerate's lists.

Layout of ``<checkpoint_dir>/step_000100/``::

    model.safetensors [vsd.safetensors]   trainable tensors (hooks below)
    optimizer.bin, optimizer_1.bin, …     accelerate: prepared optimizers, in prepare() order
    scaler.pt                             accelerate: GradScaler (fp16 only)
    random_states_<rank>.pkl              accelerate: one per rank
    custom_checkpoint_<i>.pkl             accelerate: the named states, in registration order
    contents.json                         what was saved, so a mismatching run is refused with a clear message
    model/                                a loadable export (``MagicBokehModel.save_pretrained``)

Unpickling. accelerate reads its own files with ``torch.load(weights_only=True)`` (NumPy's RNG arrays
allow-listed), except the named states, which ``accelerate.checkpointing.load_custom_state`` reads with
``weights_only=False``. The project allows no unrestricted unpickling, so :meth:`Checkpoints.load` first reads
each of those files with ``weights_only=True`` and refuses the checkpoint if that fails; what accelerate then
unpickles is only what the restricted loader accepted. Our named states are plain data by construction.

Atomicity. Every rank writes into one hidden staging folder ``.step_N.partial`` (the same name on all ranks, so
each rank's RNG file lands beside the others); once all ranks are done, the main process renames it to
``step_N``. A run killed mid-save leaves only the hidden folder, which :meth:`Checkpoints.latest` never returns.
The checkpoint folder must be on a file system that every rank sees (as for any multi-node accelerate run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from magicbokeh.errors import ConfigError
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

CONTENTS_FILE = "contents.json"
RNG_FILE = "random_states_{rank}.pkl"  # accelerate's name (accelerate.utils.RNG_STATE_NAME)
CUSTOM_STATE_FILE = "custom_checkpoint_{index}.pkl"  # accelerate's name (save_custom_state)
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


@dataclass(frozen=True)
class WeightsFile:
    """A prepared module whose checkpoint is ``<name>.safetensors`` of ``tensors()``, restored by ``load(tensors)``."""

    name: str
    module: torch.nn.Module  # the unwrapped module (DDP wrappers are matched through accelerator.unwrap_model)
    tensors: Callable[[], Mapping[str, torch.Tensor]]
    load: Callable[[dict[str, torch.Tensor]], None]


class TrainingProgress:
    """The loop's counters as a named checkpoint state (plain integers)."""

    def __init__(self) -> None:
        self.step = 0
        self.skipped_steps = 0  # updates skipped for a non-finite loss or gradient, over the whole run
        self.consecutive_skips = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.step = int(state["step"])
        self.skipped_steps = int(state["skipped_steps"])
        self.consecutive_skips = int(state["consecutive_skips"])


class Checkpoints:
    """Save and resume the state of one training loop under ``checkpoint_dir`` with ``accelerator``.

    Args:
        accelerator: the loop's accelerator, with models and optimizers already prepared.
        checkpoint_dir: where ``step_N`` folders go.
        keep_last: how many complete checkpoints to keep.
        weights: the prepared modules to save as trainable-only safetensors (see :class:`WeightsFile`).
        states: named states to register for checkpointing, in a fixed order (their names go to contents.json).
        optimizers: the names of the prepared optimizers, in prepare() order (contents.json only).
        write_extra: ``write_extra(folder)`` adds files on the main process before the folder is published
            (the loadable model export).
    """

    def __init__(
        self,
        accelerator,
        checkpoint_dir: str | os.PathLike,
        keep_last: int,
        *,
        weights: Sequence[WeightsFile] = (),
        states: Mapping[str, Any] | None = None,
        optimizers: Sequence[str] = (),
        write_extra: Callable[[Path], None] | None = None,
    ) -> None:
        if keep_last < 1:
            raise ConfigError(f"keep_last must be ≥ 1, got {keep_last}")
        self.accelerator = accelerator
        self.checkpoint_dir = Path(checkpoint_dir)
        self.keep_last = int(keep_last)
        self.weights = list(weights)
        self.states = dict(states or {})
        self.optimizers = list(optimizers)
        self.write_extra = write_extra
        for state in self.states.values():
            accelerator.register_for_checkpointing(state)
        accelerator.register_save_state_pre_hook(self._save_weights)
        accelerator.register_load_state_pre_hook(self._load_weights)

    # ------------------------------------------------------------------------------------------ accelerate hooks
    def _weights_file(self, model: torch.nn.Module) -> WeightsFile | None:
        module = self.accelerator.unwrap_model(model)
        return next((entry for entry in self.weights if entry.module is module), None)

    def _save_weights(self, models: list, weights: list, output_dir: str) -> None:
        """Write our modules' trainable tensors and take them off accelerate's list (it would save everything)."""
        for index in reversed(range(len(models))):
            entry = self._weights_file(models[index])
            if entry is None:
                continue
            if self.accelerator.is_main_process:
                # safetensors refuses shared or non-contiguous storage; detached contiguous CPU copies always work.
                tensors = {name: t.detach().to("cpu").contiguous() for name, t in entry.tensors().items()}
                save_file(tensors, str(Path(output_dir) / f"{entry.name}.safetensors"))
            weights.pop(index)

    def _load_weights(self, models: list, input_dir: str) -> None:
        for index in reversed(range(len(models))):
            entry = self._weights_file(models[index])
            if entry is None:
                continue
            entry.load(load_file(str(Path(input_dir) / f"{entry.name}.safetensors"), device="cpu"))
            models.pop(index)

    # ---------------------------------------------------------------------------------------------------- save
    def _contents(self, step: int) -> dict[str, Any]:
        return {
            "step": int(step),
            "weights": [entry.name for entry in self.weights],
            "optimizers": self.optimizers,
            "states": list(self.states),
            "num_processes": self.accelerator.num_processes,
        }

    def save(self, step: int) -> Path:
        """Every rank calls this; returns the published ``step_N`` folder."""
        accelerator = self.accelerator
        target = self.checkpoint_dir / checkpoint_name(step)
        staging = self.checkpoint_dir / f".{target.name}.partial"
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving this step
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(staging))
            if accelerator.is_main_process:
                if self.write_extra is not None:
                    self.write_extra(staging)
                atomic_write_text(staging / CONTENTS_FILE, json.dumps(self._contents(step), indent=1))
            accelerator.wait_for_everyone()  # every rank's RNG file is in the staging folder
            if accelerator.is_main_process:
                _publish(staging, target)
                self._prune()
        except BaseException:
            if accelerator.is_main_process:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        accelerator.wait_for_everyone()
        logger.info("saved checkpoint %s", target)
        return target

    def _prune(self) -> None:
        for stale in self.checkpoints()[: -self.keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
            logger.debug("removed old checkpoint %s", stale)

    # ---------------------------------------------------------------------------------------------------- find
    def checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        return list_checkpoints(self.checkpoint_dir)

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    # ---------------------------------------------------------------------------------------------------- load
    def load(self, path: str | os.PathLike) -> int:
        """Restore everything saved in ``path`` on every rank; returns the checkpoint's step."""
        path = Path(path)
        contents = read_contents(path)
        expected = self._contents(contents["step"])
        for key in ("weights", "optimizers", "states"):
            if contents[key] != expected[key]:
                raise ConfigError(
                    f"checkpoint '{path}' holds {key} {contents[key]} but this run has {expected[key]}; resume "
                    "with the settings it was saved with (trainer.schedule, trainer.max_steps, trainer.vsd)"
                )
        for index in range(len(self.states)):
            check_plain_data(path / CUSTOM_STATE_FILE.format(index=index))
        self.accelerator.load_state(str(path))
        self._check_rng_restored(path, contents)
        return int(contents["step"])

    def _check_rng_restored(self, path: Path, contents: Mapping[str, Any]) -> None:
        """accelerate logs (at INFO) and carries on when a rank's RNG file is missing or unreadable: say so."""
        rank = self.accelerator.process_index
        file = path / RNG_FILE.format(rank=rank)
        if not file.is_file():
            logger.warning(
                "%s was saved by %d process(es) and holds no RNG state for rank %d: this rank's random draws will "
                "not repeat the original run's", path, contents["num_processes"], rank,
            )  # fmt: skip
            return
        from accelerate.utils import load

        if not torch.equal(load(file)["torch_manual_seed"], torch.get_rng_state()):
            raise ConfigError(f"the RNG state in '{file}' could not be restored (see accelerate's log)")


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[Path]:
    """The complete (published) ``step_N`` folders of ``checkpoint_dir``, oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for path in checkpoint_dir.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / CONTENTS_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def read_contents(path: str | os.PathLike) -> dict[str, Any]:
    """``contents.json`` of a checkpoint folder; a clear error for anything that is not one."""
    path = Path(path)
    file = path / CONTENTS_FILE
    if not file.is_file():
        raise ConfigError(
            f"'{path}' is not a training checkpoint (no {CONTENTS_FILE}); pass resume=<run_dir>/checkpoints/"
            "step_NNNNNN or resume=latest"
        )
    return json.loads(file.read_text(encoding="utf-8"))


def check_plain_data(file: Path) -> None:
    """Refuse a named-state file that ``torch.load(weights_only=True)`` cannot read (see the module docstring)."""
    try:
        torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(
            f"'{file}' holds more than plain data (weights_only loading failed: {error}); refusing to unpickle it"
        ) from None


def _publish(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; a folder already there (the same step saved again) is swapped out first."""
    if target.exists():
        stale = target.with_name(f".{target.name}.stale")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(target, stale)
        os.replace(staging, target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(staging, target)
