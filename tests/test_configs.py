"""Every config file composes with Hydra's compose API: each root with its defaults, each group option inside a
root that uses the group, each experiment inside its root, each sweep launcher (no network, no weights); and
options that a code path would ignore are rejected instead."""

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


LAUNCHERS = sorted(p.stem for p in (CONFIG_DIR / "hydra" / "launcher").glob("*.yaml"))


def test_every_yaml_file_is_reachable():
    """No orphan config file: every YAML is a root, a group option, Hydra's own, or a sweep launcher."""
    for path in CONFIG_DIR.rglob("*.yaml"):
        relative = path.relative_to(CONFIG_DIR)
        if relative.parts[:2] == ("hydra", "launcher"):
            assert len(relative.parts) == 3 and path.stem in LAUNCHERS  # test_sweep_launchers_compose
            continue
        assert len(relative.parts) in (1, 2), f"nested config folders are not composed by the tests: {relative}"
        if len(relative.parts) == 1:
            assert path.stem in ROOT_CONFIGS, f"unknown root config {relative}"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_sweep_launchers_compose(launcher):
    """hydra/launcher=slurm | local select Hydra's submitit launcher with our settings (overridable as config)."""
    overrides = [f"hydra/launcher={launcher}", "hydra.launcher.timeout_min=30"]
    if launcher == "slurm":
        overrides += ["hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2"]
    node = OmegaConf.to_container(compose_config("train", overrides).hydra.launcher, resolve=True)
    assert node["_target_"].endswith({"slurm": "SlurmLauncher", "local": "LocalLauncher"}[launcher])
    assert node["timeout_min"] == 30 and node["submitit_folder"].endswith(".submitit/%j")
    if launcher == "slurm":  # one task (rank) per GPU
        assert node["partition"] == "gpu" and node["gpus_per_node"] == node["tasks_per_node"] == 2


# ------------------------------------------------------------------------------ options that would be ignored
def _bokeh_train(*overrides: str):
    from hydra.utils import instantiate

    return instantiate(compose_config("train", ["data.crop_size=32", *overrides]).data.bokeh_train)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("renderer=scatter", "renderer.method=scatter cannot apply to synthetic scenes"),
        ("renderer.num_layers=8", "renderer.num_layers=8 cannot apply"),
        ("renderer.highlight.enabled=true", "renderer.highlight cannot apply"),
        ("renderer.max_coc_px=20", "renderer.max_coc_px=20 differs from the dataset's max_coc_px=3,"),
    ],
)
def test_synthetic_training_data_rejects_renderer_settings_it_would_ignore(override, message, monkeypatch):
    from magicbokeh.errors import ConfigError
    from magicbokeh.utils.cli import find_user_error

    monkeypatch.chdir(CONFIG_DIR.parent)
    with pytest.raises(Exception) as raised:  # Hydra wraps it; the CLI prints the ConfigError behind it
        _bokeh_train(override)
    error = find_user_error(raised.value)
    assert isinstance(error, ConfigError) and message in str(error), raised.value


def test_renderer_settings_that_apply_to_synthetic_scenes_are_used(monkeypatch):
    """gamma, aperture, downsample and the CoC scale reach the synthetic ground truth (the renderer follows
    data.max_coc_px)."""
    import magicbokeh.data.datasets as datasets

    monkeypatch.chdir(CONFIG_DIR.parent)
    calls = []
    monkeypatch.setattr(datasets, "render_scene", lambda *args, **kwargs: calls.append(kwargs) or args[0].image)
    dataset = _bokeh_train("renderer.downsample=false", "renderer.gamma=1.8", "renderer.aperture.shape=polygon")
    dataset[0]
    assert calls[0]["downsample"] is False and calls[0]["gamma"] == 1.8 and calls[0]["aperture"].shape == "polygon"
    assert dataset.renderer.max_coc_px == compose_config("train").data.max_coc_px
