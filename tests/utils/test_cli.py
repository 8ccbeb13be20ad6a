"""One clear line for every mistake a user can fix: MagicBokehErrors, config mistakes on Hydra command lines (checked
before Hydra runs), argparse mistakes, and no leftover run folder after a failed run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from magicbokeh.errors import ConfigError, ParameterError
from magicbokeh.utils.cli import (
    USER_ERROR_EXIT_CODE,
    ArgumentParser,
    check_command_line,
    check_overrides,
    exit_on_user_error,
)

ROOT = Path(__file__).resolve().parents[2]


def _raise_parameter_error(value):
    raise ParameterError(f"value {value} out of range")


def test_user_error_exits_2_with_one_line(capsys):
    @exit_on_user_error
    def main():
        _raise_parameter_error(3)

    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err.strip() == "error: value 3 out of range"


def test_user_error_inside_hydra_instantiate_is_unwrapped(capsys):
    @exit_on_user_error
    def main():
        instantiate({"_target_": f"{__name__}._raise_parameter_error", "value": 7})

    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == USER_ERROR_EXIT_CODE
    assert "value 7 out of range" in capsys.readouterr().err


def test_a_required_value_read_by_the_task_is_a_user_error(capsys):
    from omegaconf import OmegaConf

    @exit_on_user_error
    def main():
        return OmegaConf.create({"data": {"root": "???"}}).data.root

    with pytest.raises(SystemExit):
        main()
    message = "error: missing required value 'data.root' (set data.root=... on the command line)"
    assert capsys.readouterr().err.strip() == message


def test_programming_errors_are_not_swallowed():
    @exit_on_user_error
    def main():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        main()


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        ("render", ["Kk=3"], "unknown config key 'Kk' in render.yaml; did you mean 'K'?"),
        ("render", ["tile.sise=256"], "unknown config key 'tile.sise' in render.yaml; did you mean 'tile.size'?"),
        ("train", ["model=tinny"], "config group 'model' has no option 'tinny' (choose one of: sd21, tiny)"),
        ("render", ["focus.point=[1,2"], "cannot parse the override 'focus.point=[1,2'"),
        ("render", ["tile.size=big"], "config key 'tile.size' takes a number (default 512), got 'big'"),
        ("render", ["save_maps=yes"], "config key 'save_maps' takes true or false (default false), got 'yes'"),
        ("eval", ["methods=model"], "config key 'methods' takes a list"),
        ("train", ["seed=???"], "missing required value 'seed'"),
    ],
    ids=["unknown-key", "unknown-nested-key", "group-option", "unparsable", "number", "bool", "list", "missing"],
)
def test_config_mistakes_are_one_line_naming_the_key(config, overrides, message):
    with pytest.raises(ConfigError) as info:
        check_overrides(config, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_valid_command_lines_pass():
    check_overrides("render", ["K=8", "scale=2.5", "tile.size=256", "focus.point=[10,20]", "input=x.png"])
    check_overrides("render", ["hydra.run.dir=/tmp/elsewhere", "device=cuda:1", "sweep.K=[0,8]", "tile.size=null"])
    check_overrides("train", ["experiment=smoke", "model=tiny", "+extra_note=hello", "~logger"])
    check_command_line("train", ["--help"])  # Hydra's own help is left to Hydra


def test_every_value_of_a_multirun_sweep_is_checked():
    check_command_line("train", ["-m", "experiment=smoke,sr_only", "seed=1,2"])
    with pytest.raises(ConfigError, match="no option 'sr_olny'"):
        check_command_line("train", ["-m", "experiment=smoke,sr_olny"])
    with pytest.raises(ConfigError, match="takes a number"):
        check_command_line("train", ["--multirun", "seed=1,two"])


def test_a_required_value_in_a_config_file(tmp_path):
    (tmp_path / "job.yaml").write_text("data:\n  root: ???\nsteps: 3\n")
    with pytest.raises(ConfigError, match=r"missing required value 'data.root' \(set data.root=\.\.\."):
        check_overrides("job", ["steps=4"], config_dir=tmp_path)
    check_overrides("job", ["data.root=/data"], config_dir=tmp_path)


def test_argparse_mistakes_are_one_line(capsys):
    parser = ArgumentParser(prog="tool")
    parser.add_argument("--count", type=int, required=True)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--count", "many"])
    assert info.value.code == USER_ERROR_EXIT_CODE
    assert capsys.readouterr().err == "error: argument --count: invalid int value: 'many' (see tool --help)\n"


def _run(script, *arguments, cwd, env=None):
    environment = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", **(env or {}))
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")])
    command = [sys.executable, str(ROOT / "scripts" / script), *arguments]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=environment, timeout=300, check=False)


MISTAKES = {  # the command-line mistake and the key its message must name
    "unknown-key": ("seeed=3", "'seeed'"),
    "group-option": ("paths=nowhere", "'paths'"),
    "unparsable": ("seed=[1,", "'seed=[1,'"),
    "wrong-type": ("seed=abc", "'seed'"),
    "missing": ("seed=???", "'seed'"),
}


@pytest.mark.slow  # each case starts Python with Hydra in a subprocess (~2 s idle)
@pytest.mark.parametrize("script", ["render.py", "train.py", "evaluate.py"])
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_entry_points_report_config_mistakes_in_one_line(tmp_path, script, mistake):
    override, key = MISTAKES[mistake]
    result = _run(script, override, cwd=tmp_path)
    assert result.returncode == USER_ERROR_EXIT_CODE, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], lines
    assert not list(tmp_path.iterdir())  # nothing created: no outputs/ run folder, no log


@pytest.mark.slow
def test_argparse_entry_points_report_mistakes_in_one_line(tmp_path):
    for script, arguments, key in [
        ("make_dataset.py", ["synthetic", "--count", "abc"], "--count"),
        ("make_dataset.py", ["synthetic"], "--out"),
        ("make_dataset.py", ["synthetic", "--out", "x", "--cuont", "3"], "--cuont"),
        ("benchmark.py", ["inference", "--sizes"], "--sizes"),
        ("benchmark.py", ["inferense"], "inferense"),
    ]:
        result = _run(script, *arguments, cwd=tmp_path)
        assert result.returncode == USER_ERROR_EXIT_CODE, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], lines


@pytest.mark.slow
def test_hydra_full_error_shows_hydras_own_report(tmp_path):
    result = _run("train.py", "seeed=3", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_a_slurm_sweep_without_slurm_is_one_line(monkeypatch):
    import magicbokeh.utils.cli as cli

    monkeypatch.setattr(cli.shutil, "which", lambda name: None)  # a machine without srun, whatever runs the tests
    with pytest.raises(ConfigError, match="needs a Slurm cluster, and 'srun' is not on this machine's PATH"):
        check_overrides("train", ["hydra/launcher=slurm", "experiment=smoke,sr_only"], multirun=True)
    check_overrides("train", ["hydra/launcher=slurm"], multirun=False)  # a single run does not launch through it
    monkeypatch.setattr(cli.shutil, "which", lambda name: f"/usr/bin/{name}")
    check_overrides("train", ["hydra/launcher=slurm", "experiment=smoke,sr_only"], multirun=True)
