"""Config helpers shared by entry points and tests: where the configs live, composing them without a CLI, and the
project's OmegaConf resolvers (registered when this module is imported)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
ROOT_CONFIGS = ("train", "eval", "render", "depth", "demo", "study")
LAUNCH_ID_RESOLVER = "magicbokeh.launch_id"


def launch_id() -> str:
    """The default ``run_id`` (``${magicbokeh.launch_id:}``): new for every launch, identical on all its ranks.

    Hydra creates ``hydra.run.dir`` on every rank before any code runs, so the default must agree across the ranks
    of one ``torchrun`` / ``accelerate launch`` without communicating: their workers share the rendezvous id
    ``TORCHELASTIC_RUN_ID`` (a fresh UUID per single-node launch), and its first 8 characters name the run. A
    single process (or a launch without a rendezvous id, e.g. a static multi-node one: pass ``run_id=NAME`` there)
    gets the start time. Whatever the ranks compute, training writes into rank 0's directory (broadcast).
    """
    rendezvous = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if rendezvous != "none":
        return f"launch-{rendezvous[:8]}"
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def register_resolvers() -> None:
    """Register the project's resolvers (cached: one value per process, copied into Hydra's sweep jobs)."""
    OmegaConf.register_new_resolver(LAUNCH_ID_RESOLVER, launch_id, use_cache=True, replace=True)


register_resolvers()


def compose_config(root: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<root>.yaml`` with overrides through Hydra's compose API (tests, notebooks).

    The Hydra node itself is included so interpolations such as the run directory resolve exactly as in a CLI run.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=root):
        return compose(config_name=root, overrides=list(overrides or []), return_hydra_config=True)
