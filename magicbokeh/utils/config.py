"""Config helpers shared by entry points and tests: where the configs live, and composing them without a CLI."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
ROOT_CONFIGS = ("train", "eval", "render", "depth", "demo")


def compose_config(root: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<root>.yaml`` with overrides through Hydra's compose API (tests, notebooks).

    The Hydra node itself is included so interpolations such as the run directory resolve exactly as in a CLI run.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=root):
        return compose(config_name=root, overrides=list(overrides or []), return_hydra_config=True)
