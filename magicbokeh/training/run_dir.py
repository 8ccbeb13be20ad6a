"""The run directory of a training entry point: one per run, chosen on rank 0 and broadcast to every rank."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from magicbokeh.errors import ConfigError
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)


def run_dir_of(cfg: DictConfig) -> Path:
    """This process's run directory: Hydra's output dir under ``@hydra.main``, else the composed ``hydra.run.dir``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    if "hydra" in cfg:
        return Path(cfg.hydra.run.dir)
    raise ConfigError("no run directory: call the entry point through its script or compose with return_hydra_config")


def choose_run_dir(cfg: DictConfig, state) -> Path:
    """The run's one directory: rank 0's :func:`run_dir_of`, broadcast to every rank (``state``: accelerate's
    ``PartialState``) and created there.

    Each rank composes its own config, so without ``run_id=NAME`` a default that differed across ranks (a start
    time) would scatter outputs; the default ``${magicbokeh.launch_id:}`` already agrees across the ranks of a
    torchrun / accelerate launch (so Hydra's own per-rank files land in the same folder too), and the broadcast
    makes the choice rank 0's whatever each rank computed.
    """
    from accelerate.utils import broadcast_object_list

    own = str(run_dir_of(cfg))
    chosen = [own]
    if state.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    if chosen[0] != own:
        logger.warning("rank %d composed run directory %s; the run writes to rank 0's %s (pass run_id=NAME)",
                       state.process_index, own, chosen[0])  # fmt: skip
    run_dir = Path(chosen[0])
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    return run_dir
