"""Every config file composes with Hydra's compose API: each root with its defaults, each group option inside a
root that uses the group, each experiment inside its root (no network, no weights, nothing instantiated)."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from magicbokeh.utils.config import CONFIG_DIR, ROOT_CONFIGS, compose_config

# Groups that are not selectable options of a root (hydra/ is Hydra's own; experiment/ is tested separately).
_NOT_OPTION_GROUPS = {"hydra", "experiment"}


def _root_defaults(root: str) -> list[str]:
    """Group names in a root config's defaults list."""
    raw = yaml.safe_load((CONFIG_DIR / f"{root}.yaml").read_text())
    groups = []
    for entry in raw.get("defaults", []):
        if isinstance(entry, dict):
            groups.extend(key.split("@")[0].removeprefix("override ") for key in entry)
    return groups


def _group_options() -> list[tuple[str, str, str]]:
    cases = []
    for group_dir in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in _NOT_OPTION_GROUPS):
        roots = [root for root in ROOT_CONFIGS if group_dir.name in _root_defaults(root)]
        assert roots, f"config group '{group_dir.name}' is used by no root config"
        for option in sorted(group_dir.glob("*.yaml")):
            cases.append((roots[0], group_dir.name, option.stem))
    return cases


def _resolve_without_hydra(cfg) -> dict:
    """Resolve every interpolation of the job config (Hydra's own node has run-time-only keys such as job.num)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(container), resolve=True)


def _experiment_root(name: str) -> str:
    """Experiments for the depth distillation are named depth_*; every other experiment belongs to train.yaml."""
    return "depth" if name.startswith("depth_") else "train"


@pytest.mark.parametrize("root", ROOT_CONFIGS)
def test_root_config_composes_and_resolves(root):
    cfg = compose_config(root)
    container = _resolve_without_hydra(cfg)
    assert container["task_name"]
    run_dir = cfg.hydra.run.dir
    assert run_dir.startswith(cfg.paths.output_dir) and cfg.task_name in run_dir


@pytest.mark.parametrize(("root", "group", "option"), _group_options())
def test_group_option_composes(root, group, option):
    _resolve_without_hydra(compose_config(root, [f"{group}={option}"]))


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_experiment_composes(experiment):
    _resolve_without_hydra(compose_config(_experiment_root(experiment), [f"experiment={experiment}"]))


def test_fixed_run_id_gives_one_run_dir_for_all_ranks():
    """Under `accelerate launch`, every rank composes the config itself; a fixed run_id makes them agree."""
    dirs = {compose_config("train", ["run_id=shared"]).hydra.run.dir for _ in range(2)}
    assert len(dirs) == 1 and next(iter(dirs)).endswith("train/shared")


def test_every_yaml_file_is_reachable():
    """No orphan config file: every YAML is a root, a group option, or Hydra's own."""
    for path in CONFIG_DIR.rglob("*.yaml"):
        relative = path.relative_to(CONFIG_DIR)
        assert len(relative.parts) in (1, 2), f"nested config folders are not composed by the tests: {relative}"
        if len(relative.parts) == 1:
            assert path.stem in ROOT_CONFIGS, f"unknown root config {relative}"
