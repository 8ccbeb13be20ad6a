"""Training checkpoints: one folder per step, written atomically, the last K kept.

Layout of ``<checkpoint_dir>/step_000100/``::

    model.safetensors     trainable tensors (name → tensor); nothing pickled
    optimizers.pt         {name: optimizer.state_dict()}   (torch.save; read back with weights_only=True)
    schedulers.pt         {name: scheduler.state_dict()}   (same)
    trainer_state.json    step, phase, data positions, RNG states, anything else JSON-able the trainer keeps
    <name>.safetensors    optional extra tensor sets (e.g. ``vsd.safetensors``: the VSD fake-score LoRA); runs
                          without them write and read exactly the four files above

The folder is assembled under a hidden temporary name in the same directory and then renamed, so a run killed
mid-save never leaves a half-written ``step_*`` folder that :meth:`CheckpointManager.latest` would pick up.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from magicbokeh.errors import ConfigError
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZERS_FILE = "optimizers.pt"
SCHEDULERS_FILE = "schedulers.pt"
TRAINER_STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


class CheckpointManager:
    """Save, find and load training checkpoints under ``checkpoint_dir``, keeping the newest ``keep_last``."""

    def __init__(self, checkpoint_dir: str | os.PathLike, keep_last: int) -> None:
        if keep_last < 1:
            raise ConfigError(f"keep_last must be ≥ 1, got {keep_last}")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.keep_last = int(keep_last)

    def save(
        self,
        step: int,
        model_state: Mapping[str, torch.Tensor],
        optimizers: Mapping[str, Any],
        schedulers: Mapping[str, Any],
        trainer_state: Mapping[str, Any],
        write_extra: Callable[[Path], None] | None = None,
        extra_tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    ) -> Path:
        """Write checkpoint ``step`` atomically and prune old ones; returns its folder.

        ``optimizers``/``schedulers`` map a name to either the object (its ``state_dict()`` is taken) or a state
        dict already. ``write_extra(folder)`` may add files (e.g. an exported model) before the folder is published.
        ``extra_tensors`` maps a name to a tensor set saved as ``<name>.safetensors`` (read back with
        :meth:`load_extra_tensors`).
        """
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        target = self.checkpoint_dir / checkpoint_name(step)
        temp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=self.checkpoint_dir))
        try:
            # safetensors refuses shared or non-contiguous storage; detached contiguous CPU copies are always valid.
            tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model_state.items()}
            save_file(tensors, str(temp_dir / MODEL_FILE))
            for name, extra in (extra_tensors or {}).items():
                if f"{name}.safetensors" in (MODEL_FILE, OPTIMIZERS_FILE, SCHEDULERS_FILE):
                    raise ConfigError(f"extra tensor set name '{name}' collides with a checkpoint file")
                extra = {key: tensor.detach().to("cpu").contiguous() for key, tensor in extra.items()}
                save_file(extra, str(temp_dir / f"{name}.safetensors"))
            torch.save({name: _state_dict(obj) for name, obj in optimizers.items()}, temp_dir / OPTIMIZERS_FILE)
            torch.save({name: _state_dict(obj) for name, obj in schedulers.items()}, temp_dir / SCHEDULERS_FILE)
            state = {"step": int(step), **trainer_state}
            if write_extra is not None:
                write_extra(temp_dir)
            (temp_dir / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
            if target.exists():  # re-saving a step (e.g. after a resume): swap the old folder out first
                stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=self.checkpoint_dir))
                os.replace(target, stale / target.name)
                os.replace(temp_dir, target)
                shutil.rmtree(stale, ignore_errors=True)
            else:
                os.replace(temp_dir, target)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        self._prune()
        logger.info("saved checkpoint %s", target)
        return target

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = []
        for path in self.checkpoint_dir.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and path.is_dir() and (path / TRAINER_STATE_FILE).is_file():
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    def load(
        self, path: str | os.PathLike
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Read a checkpoint folder → ``(model_state, optimizer_states, scheduler_states, trainer_state)``."""
        path = Path(path)
        expected = (MODEL_FILE, OPTIMIZERS_FILE, SCHEDULERS_FILE, TRAINER_STATE_FILE)
        missing = [name for name in expected if not (path / name).is_file()]
        if missing:
            raise ConfigError(
                f"'{path}' is not a training checkpoint (missing {', '.join(missing)}); pass resume=<run_dir>/"
                f"checkpoints/step_NNNNNN or resume=latest"
            )
        model_state = load_file(str(path / MODEL_FILE), device="cpu")
        optimizer_states = torch.load(path / OPTIMIZERS_FILE, map_location="cpu", weights_only=True)
        scheduler_states = torch.load(path / SCHEDULERS_FILE, map_location="cpu", weights_only=True)
        trainer_state = json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        return model_state, optimizer_states, scheduler_states, trainer_state

    @staticmethod
    def load_extra_tensors(path: str | os.PathLike, name: str) -> dict[str, torch.Tensor] | None:
        """The ``<name>.safetensors`` tensor set of a checkpoint folder, or None when it has none."""
        file = Path(path) / f"{name}.safetensors"
        return load_file(str(file), device="cpu") if file.is_file() else None

    def _prune(self) -> None:
        for stale in self.checkpoints()[: -self.keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
            logger.debug("removed old checkpoint %s", stale)


def _state_dict(obj: Any) -> Any:
    return obj.state_dict() if hasattr(obj, "state_dict") else obj


def generator_state_to_text(generator: torch.Generator) -> str:
    """A ``torch.Generator``'s state as JSON-able text (for ``trainer_state.json``)."""
    return _bytes_tensor_to_text(generator.get_state())


def restore_generator_state(generator: torch.Generator, text: str) -> None:
    """Inverse of :func:`generator_state_to_text`."""
    generator.set_state(_text_to_bytes_tensor(text))


def _bytes_tensor_to_text(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _text_to_bytes_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA, if present) global RNG states as a JSON-able dict.

    Library code samples from explicit generators, but third-party code (dropout, ``latent_dist.sample()``) uses
    the global torch RNG; restoring it is what makes a resumed run reproduce the uninterrupted one bit for bit.
    """
    numpy_state = np.random.get_state()  # noqa: NPY002 (capturing the legacy global state is the point)
    state: dict[str, Any] = {
        "python": _python_state_to_json(random.getstate()),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *(int(x) for x in numpy_state[2:4]), float(numpy_state[4])],
        "torch": _bytes_tensor_to_text(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_bytes_tensor_to_text(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(_text_to_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_text_to_bytes_tensor(s) for s in state["cuda"]])


def _python_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
