"""Entry-point helpers: every mistake a user can fix ends as one ``error: …`` line and exit status 2.

* :func:`hydra_main` replaces ``@hydra.main`` in the Hydra scripts. Hydra composes the configuration before the
  task runs and reports a misspelt key, an unknown group option or an unparsable value in several lines with exit
  status 1, out of reach of the task's own error handling. So the command line is composed and checked here first
  (:func:`check_overrides`): unknown keys (with the closest known key), unknown group options (with the choices),
  values Hydra cannot parse, values of the wrong type (a word where the config holds a number, a scalar where it
  holds a list, ...) and required values left at ``???``. Only a command line that passes runs under Hydra, which
  composes it again. ``HYDRA_FULL_ERROR=1`` skips the check and shows Hydra's own report.
* :func:`exit_on_user_error` turns a :class:`MagicBokehError` raised by the task into ``error: <message>``.
* :class:`ArgumentParser` does the same for the argparse scripts (no usage block, exit 2).
* A run that stops on a user error leaves no run folder behind that holds only Hydra's bookkeeping.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from magicbokeh.errors import ConfigError, MagicBokehError
from magicbokeh.utils.config import CONFIG_DIR

F = TypeVar("F", bound=Callable)

USER_ERROR_EXIT_CODE = 2
_HYDRA_BOOKKEEPING = ".hydra"


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)


def exit_on_user_error(fn: F) -> F:
    """Decorate an entry point so a user error prints ``error: <message>`` (no traceback) and exits 2.

    ``SystemExit`` is a ``BaseException``, so Hydra's own exception reporting (which catches ``Exception``) lets it
    through unchanged.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            user_error = find_user_error(error)
            if user_error is None:
                raise
            _fail(str(user_error))

    return wrapper  # type: ignore[return-value]


def find_user_error(error: BaseException) -> MagicBokehError | None:
    """The user's mistake behind ``error``, if any, as a :class:`MagicBokehError`.

    ``hydra.utils.instantiate`` re-raises constructor errors as its own ``InstantiationException`` (chained with
    ``from``), and DataLoader workers re-raise theirs; following the cause/context chain recovers the user's message.
    A required config value left at ``???`` or an interpolation that cannot be resolved is a config mistake too.
    """
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, MagicBokehError):
            return current
        if isinstance(current, MissingMandatoryValue):
            key = getattr(current, "full_key", None) or "?"
            return ConfigError(f"missing required value '{key}' (set {key}=... on the command line)")
        if isinstance(current, InterpolationResolutionError):
            return ConfigError(f"cannot resolve config value: {_first_line(str(current))}")
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def set_offline_defaults() -> None:
    """Make hub-backed libraries fail fast instead of retrying for 30–55 s per call: weights are local only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one ``error: …`` line (pointing at ``--help``), exit 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see {self.prog} --help)")


# ---------------------------------------------------------------------------------------------------- Hydra scripts
def hydra_main(config_name: str, config_dir: str | os.PathLike = CONFIG_DIR) -> Callable[[Callable], Callable]:
    """``@hydra.main`` for ``configs/<config_name>.yaml``, with the command line checked first (module docstring).

    Usage::

        @hydra_main("render")
        def main(cfg: DictConfig) -> None: ...

        if __name__ == "__main__":
            main()
    """
    import hydra

    def decorate(task: Callable[[Any], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def task_with_cleanup(cfg: Any) -> Any:
            try:
                return task(cfg)
            except Exception as error:
                if find_user_error(error) is not None:
                    _remove_bookkeeping_only_run_dir()
                raise

        run = hydra.main(config_path=str(config_dir), config_name=config_name, version_base="1.3")(
            exit_on_user_error(task_with_cleanup)
        )

        @functools.wraps(task)
        def entry_point() -> Any:
            set_offline_defaults()
            if not os.environ.get("HYDRA_FULL_ERROR"):
                try:
                    check_command_line(config_name, sys.argv[1:], config_dir)
                except ConfigError as error:
                    _fail(str(error))
            return run()

        return entry_point

    return decorate


def _remove_bookkeeping_only_run_dir() -> None:
    """Delete this run's Hydra folder when it holds nothing but Hydra's bookkeeping (``.hydra/``, the job log),
    and the folders above it that are left empty, up to the working directory."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir).resolve()
    cwd = Path.cwd().resolve()
    if not folder.is_dir() or folder == cwd:
        return
    bookkeeping = {_HYDRA_BOOKKEEPING, f"{hydra_cfg.job.name}.log"}
    if any(entry.name not in bookkeeping for entry in folder.iterdir()):
        return
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.parent
    while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def check_command_line(config_name: str, argv: Sequence[str], config_dir: str | os.PathLike = CONFIG_DIR) -> None:
    """Check the overrides of a Hydra command line (``sys.argv[1:]``); :class:`ConfigError` on the first mistake.

    Command lines that only ask Hydra for information (``--help``, ``--info``, shell completion, another config
    folder or primary config) are left to Hydra.
    """
    from hydra._internal.utils import get_args_parser

    try:
        args, _ = get_args_parser().parse_known_args(list(argv))
    except SystemExit:  # Hydra's own parser reports its flag errors itself
        return
    if args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun:
        return
    if args.config_path or args.config_dir:
        return
    check_overrides(args.config_name or config_name, args.overrides, multirun=args.multirun, config_dir=config_dir)


def check_overrides(
    config_name: str,
    overrides: Sequence[str],
    *,
    multirun: bool = False,
    config_dir: str | os.PathLike = CONFIG_DIR,
) -> None:
    """Compose ``config_name`` with ``overrides`` as Hydra will and raise :class:`ConfigError` (one line, naming the
    key) for the first mistake. In a multirun every value of every sweep is checked."""
    from hydra import initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException as error:
            raise ConfigError(f"cannot parse the override '{text}': {_first_line(str(error))}") from None
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3", job_name=config_name):
        for variant in _variants(parsed, multirun):
            _check_variant(config_name, variant, multirun)


def _variants(parsed: Sequence[Any], multirun: bool) -> Iterator[list[tuple[Any, str | None]]]:
    """(override, value text) lists to compose: as given; in a multirun, every sweep value once (the others at their
    first value)."""

    def values(override: Any) -> list[str | None]:
        if not (multirun and override.is_sweep_override()):
            return [None]  # the override as typed
        try:
            return list(override.sweep_string_iterator())
        except Exception:  # sweeps Hydra expands itself (globs over a config group): left to Hydra
            return []

    choices = [(override, values(override)) for override in parsed]
    choices = [(override, options) for override, options in choices if options]
    base = [(override, options[0]) for override, options in choices]
    yield base
    for index, (override, options) in enumerate(choices):
        for option in options[1:]:
            variant = list(base)
            variant[index] = (override, option)
            yield variant


def _override_text(override: Any, value: str | None) -> str:
    return override.input_line if value is None else f"{override.get_key_element()}={value}"


def _check_variant(config_name: str, variant: list[tuple[Any, str | None]], multirun: bool = False) -> None:
    from hydra import compose

    texts = [_override_text(override, value) for override, value in variant]
    try:
        cfg = compose(config_name, overrides=texts, return_hydra_config=True)
    except Exception as error:
        raise ConfigError(_composition_message(config_name, error, texts)) from None
    choices = set(cfg.hydra.runtime.choices.keys())
    groups = [text for (override, _), text in zip(variant, texts) if override.key_or_group in choices]
    base = compose(config_name, overrides=groups, return_hydra_config=True)
    for (override, _), text in zip(variant, texts):
        if override.key_or_group in choices or override.is_delete() or override.is_add() or override.package:
            continue
        _check_type(override.key_or_group, text, base, cfg)
    missing = [key for key in _walk_keys(cfg) if not key.startswith("hydra.") and _is_missing(cfg, key)]
    if missing:
        raise ConfigError(f"missing required value '{missing[0]}' (set {missing[0]}=... on the command line)")
    if multirun and "SlurmLauncher" in str(cfg.hydra.launcher.get("_target_", "")) and not shutil.which("srun"):
        # submitit would say so with a traceback, after Hydra has set the sweep up
        raise ConfigError("hydra/launcher=slurm needs a Slurm cluster, and 'srun' is not on this machine's PATH "
                          "(hydra/launcher=local runs the same sweep here)")


def _walk_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a config, nested mappings included, without resolving interpolations."""
    from omegaconf import DictConfig

    for key in node:
        path = f"{prefix}{key}"
        yield path
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_interpolation() and not child._is_missing():
            yield from _walk_keys(child, f"{path}.")


def _is_missing(cfg: Any, key: str) -> bool:
    from omegaconf import DictConfig, OmegaConf

    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    return isinstance(parent, DictConfig) and OmegaConf.is_missing(parent, leaf)


def _node(cfg: Any, key: str) -> tuple[bool, Any, bool]:
    """(found, raw value, is an interpolation) of ``key`` in ``cfg`` without resolving anything."""
    from omegaconf import DictConfig, OmegaConf

    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        return False, None, False
    if OmegaConf.is_interpolation(parent, leaf) or OmegaConf.is_missing(parent, leaf):
        return True, None, True
    return True, parent[leaf], False


def _kind(value: Any) -> str | None:
    from omegaconf import DictConfig, ListConfig

    if value is None:
        return None
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, ListConfig | list | tuple):
        return "a list"
    if isinstance(value, DictConfig | dict):
        return "a mapping"
    return "a string"


def _check_type(key: str, text: str, base: Any, cfg: Any) -> None:
    """A value must keep the kind of the config's default (a string default takes any single value; null any)."""
    found, default, interpolated = _node(base, key)
    if not found or interpolated:
        return
    _, value, value_interpolated = _node(cfg, key)
    expected, given = _kind(default), _kind(value)
    if expected is None or given is None or value_interpolated or expected == given:
        return
    if expected == "a string" and given in ("a number", "true or false"):
        return
    shown = text.partition("=")[2]
    raise ConfigError(f"config key '{key}' takes {expected} (default {_short(default)}), got '{shown}'")


def _short(value: Any) -> str:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())


def _known_keys(config_name: str) -> list[str]:
    """Every dotted key of the job config composed with its defaults (candidates for 'did you mean')."""
    from hydra import compose

    return list(_walk_keys(compose(config_name)))


def _composition_message(config_name: str, error: Exception, overrides: Sequence[str]) -> str:
    """Hydra's multi-line composition error → one line that names the key and, when it can, the fix."""
    from hydra.errors import MissingConfigException

    text = str(error)
    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        options = ", ".join(error.options or ()) or "none"
        if group:
            return f"config group '{group}' has no option '{option}' (choose one of: {options})"
        return f"no config file '{error.missing_cfg_file}' for {config_name}.yaml"
    if text.startswith("Could not override"):
        key = text.split("'")[1]
        if "not in struct" in str(cause) or "No match in the defaults list" in text:
            close = difflib.get_close_matches(key, _known_keys(config_name), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            return f"unknown config key '{key}' in {config_name}.yaml{hint} (a new key needs a leading +: +{key}=...)"
        return f"cannot set '{key}': {_first_line(str(cause or text))}"
    if text.startswith("Could not append to config. An item is already at"):
        key = text.split("'")[1]
        return f"'{key}' is already in the config: set it with {key}=... (no leading +)"
    return f"{_first_line(text)} (command line: {' '.join(overrides)})"
