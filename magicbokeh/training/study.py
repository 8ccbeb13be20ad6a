"""Ablation studies in one command: every (variant, seed) trained as one Hydra sweep, evaluated, tabulated.

``python scripts/study.py study=ablation_fama [scale=smoke]`` reads a study (``configs/study/<name>.yaml``): its
variants (name → training and evaluation overrides, and the paper row it reproduces), the seeds, the experiment the
runs derive from, the benchmark and its evaluation settings and the table's metrics; ``scales.<scale>`` replaces any
of these (the ``smoke`` scale: tiny model, synthetic data, CPU). Then, into one study folder ``out_dir``:

0. **prepare** — commands a scale needs once (``prepare: [{creates, command}]``, e.g. the smoke depth models),
   skipped when what they create exists.
1. **train** — :func:`training_sweep_command`: ONE multirun of ``scripts/train.py`` over a generated config group
   ``study_run`` with one option per (variant, seed) still to train, each a ``# @package _global_`` file holding the
   settings, the seed and the run's name (``<variant>_seed<k>``), which is also its folder (``hydra.sweep.subdir``):
   ``<out_dir>/runs/<variant>_seed<k>``. Any Hydra launcher runs it (``launcher=local``: submitit subprocesses
   here; ``slurm``: one Slurm job each; ``basic``: one after the other in one process). A run whose final model
   exists is finished and left out; a run with checkpoints continues from its latest (``resume: latest``); the
   others start afresh.
2. **evaluate** — the same for ``scripts/evaluate.py`` (config group ``study_eval``): each final model is scored
   with the evaluation runner into ``<out_dir>/eval/<variant>_seed<k>`` (its own manifest: a retrained checkpoint
   is re-scored with ``overwrite``); an evaluation whose ``summary.json`` holds every table metric of the current
   checkpoint is kept.
3. **table** — :mod:`magicbokeh.training.study_report`: variant × metric, mean ± std over seeds (sample standard
   deviation of the per-seed benchmark means), the paper's value beside it when the study is scored on the paper's
   benchmark; Markdown, CSV, a bar plot and a results file.

Each prepare / train / evaluate stage that has work to do appends its wall time to ``<out_dir>/timing.jsonl``,
interrupted ones too (Ctrl-C, SIGTERM; marked ``"completed": false``): the table stage reports what the study cost
summed over every invocation, so a study that was interrupted and resumed still reports its whole cost.

Precedence: a job file holds the study's shared settings, then the variant's, then the caller's
(``train_overrides=`` / ``eval_overrides=``), so a variant's value beats a shared one and the caller's beats both.
What a config file cannot hold (config-group choices such as ``experiment=``, ``model=sd21``, ``metrics=paper``;
``hydra.*``) goes on the sweep's command line and may only be shared, never vary between variants.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from magicbokeh.errors import ConfigError, DatasetError
from magicbokeh.utils.config import CONFIG_DIR, compose_config
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)

REPO_ROOT = CONFIG_DIR.parent
STAGES = ("prepare", "train", "evaluate", "table")
RUN_GROUP, EVAL_GROUP = "study_run", "study_eval"
TIMING_FILE = "timing.jsonl"  # one line per stage that did work: {stage, jobs, seconds, completed, date}
FINAL_FILES = ("model.safetensors", "config.json")  # written in this order by save_pretrained: both = finished
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Variant:
    """One arm of a study: overrides of the training run and of its evaluation, and the paper row it reproduces."""

    name: str
    train: tuple[str, ...] = ()
    evaluate: tuple[str, ...] = ()
    paper_row: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Job:
    """One (variant, seed): its name, training folder and evaluation folder."""

    variant: Variant
    seed: int
    run_dir: Path
    eval_dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant.name}_seed{self.seed}"

    @property
    def final_model(self) -> Path:
        return self.run_dir / "final"


@dataclass(frozen=True)
class Study:
    """A study at one scale, resolved from ``configs/study.yaml`` (:func:`study_from_config`)."""

    name: str
    title: str
    scale: str
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    experiment: str
    train_overrides: tuple[str, ...]
    benchmark: str
    eval_overrides: tuple[str, ...]
    metrics: tuple[str, ...]
    out_dir: Path
    paper: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    prepare: tuple[dict[str, Any], ...] = ()
    # The caller's overrides (scripts/study.py train_overrides / eval_overrides): after the variant's, so they win.
    extra_train_overrides: tuple[str, ...] = ()
    extra_eval_overrides: tuple[str, ...] = ()

    @property
    def jobs(self) -> list[Job]:
        return [
            Job(variant, seed, self.out_dir / "runs" / f"{variant.name}_seed{seed}",
                self.out_dir / "eval" / f"{variant.name}_seed{seed}")
            for variant in self.variants
            for seed in self.seeds
        ]  # fmt: skip


def _strings(values: Any, what: str) -> tuple[str, ...]:
    """A list of overrides; nested lists are flattened (a scale can list a shared list plus its own)."""
    if values is None:
        return ()
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ConfigError(f"{what} must be a list of overrides, got {values!r}")
    flat: list[str] = []
    for value in values:
        flat.extend(_strings(value, what) if not isinstance(value, str) and isinstance(value, Sequence) else [value])
    return tuple(str(value) for value in flat)


def study_from_config(cfg: DictConfig) -> Study:
    """``configs/study.yaml`` (with ``study``, ``paper``, ``scale``, ``variants``, ``seeds``, overrides) → a Study."""
    node = OmegaConf.to_container(cfg.study, resolve=True)
    scale = str(cfg.scale)
    scales = node.pop("scales", None) or {}
    if scale != "full":
        if scale not in scales:
            raise ConfigError(f"study {node['name']} has no scale '{scale}'; it has full, {', '.join(scales)}")
        node = OmegaConf.to_container(OmegaConf.merge(node, scales[scale]), resolve=True)
    definitions = node.get("variants") or {}
    chosen = list(node.get("use_variants") or definitions)
    if cfg.variants is not None:
        chosen = [str(name) for name in cfg.variants]
    unknown = [name for name in chosen if name not in definitions]
    if unknown or not chosen:
        raise ConfigError(f"study {node['name']}: unknown or no variant(s) {unknown}; it defines {list(definitions)}")
    paper = OmegaConf.to_container(cfg.paper, resolve=True) if cfg.get("paper") is not None else {}
    rows = paper.get("rows", {})
    variants = []
    for name in chosen:
        spec = definitions[name] or {}
        if not _NAME.fullmatch(name):
            raise ConfigError(f"variant name '{name}' must be letters, digits and '_' (it names folders and files)")
        row = spec.get("paper_row")
        if row is not None and row not in rows:
            raise ConfigError(f"variant {name}: paper_row '{row}' is not a row of the paper table ({list(rows)})")
        variants.append(
            Variant(name, _strings(spec.get("train"), f"variant {name}: train"),
                    _strings(spec.get("evaluate"), f"variant {name}: evaluate"), row,
                    str(spec.get("description", "")))
        )  # fmt: skip
    seeds = tuple(int(seed) for seed in (cfg.seeds if cfg.seeds is not None else node.get("seeds") or [0]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {list(seeds)}")
    train, evaluate = node.get("train") or {}, node.get("evaluate") or {}
    metrics = tuple(str(m) for m in (node.get("table") or {}).get("metrics") or ())
    if not metrics:
        raise ConfigError(f"study {node['name']}: table.metrics lists no metric")
    # The study's own paths (weights, data; e.g. `python scripts/study.py ... paths.sd21=/weights/sd21`) hold for every
    # run it launches; where the runs write is the study's to choose (out_dir), so output_dir is not passed on.
    forwarded = tuple(
        f"paths.{key}={'null' if value is None else value}"
        for key, value in OmegaConf.to_container(cfg.paths, resolve=True).items()
        if key != "output_dir"
    )
    return Study(
        name=str(node["name"]),
        title=str(node.get("title", node["name"])),
        scale=scale,
        variants=tuple(variants),
        seeds=seeds,
        experiment=str(train["experiment"]),
        train_overrides=(*forwarded, *_strings(train.get("overrides"), "train.overrides")),
        benchmark=str(evaluate["benchmark"]),
        eval_overrides=(*forwarded, *_strings(evaluate.get("overrides"), "evaluate.overrides")),
        metrics=metrics,
        out_dir=Path(str(cfg.out_dir)).resolve(),
        paper=paper,
        notes=str(node.get("notes", "")).strip(),
        prepare=tuple(_prepare_steps(node.get("prepare"))),
        extra_train_overrides=_strings(cfg.train_overrides, "train_overrides"),
        extra_eval_overrides=_strings(cfg.eval_overrides, "eval_overrides"),
    )


def _prepare_steps(steps: Any) -> list[dict[str, Any]]:
    """``prepare``: ``[{creates: PATH, command: [script.py, override, ...]}]``, run once before training."""
    checked = []
    for step in steps or []:
        if not isinstance(step, Mapping) or not step.get("creates") or not step.get("command"):
            raise ConfigError(f"each prepare step needs 'creates' (a path) and 'command' (a list), got {step!r}")
        checked.append({"creates": str(step["creates"]), "command": _strings(step["command"], "prepare.command")})
    return checked


# ------------------------------------------------------------------------------------------------ generated configs
def _parse(text: str) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        (override,) = OverridesParser.create().parse_overrides([text])
    except HydraException as error:
        raise ConfigError(f"cannot parse the override '{text}': {str(error).splitlines()[0]}") from None
    return override


def is_command_line_only(text: str) -> bool:
    """Overrides a config file cannot hold: config-group choices (``model=sd21``, ``hydra/launcher=x``), Hydra's
    own settings (``hydra.*``), deletions, sweeps and package overrides. They go on the sweep's command line."""
    override = _parse(text)
    key = override.key_or_group
    return (
        override.is_delete() or override.is_sweep_override() or override.package is not None or "/" in key
        or key.split(".")[0] == "hydra" or ("." not in key and (CONFIG_DIR / key).is_dir())
    )  # fmt: skip


def overrides_to_config(overrides: Sequence[str], what: str = "variant") -> dict[str, Any]:
    """``key=value`` overrides (Hydra's grammar: lists, quoting, ``null``, interpolations) as one nested dict, what a
    ``# @package _global_`` config file holding them contains; later overrides win. Anything
    :func:`is_command_line_only` is refused (a variant can only vary settings)."""
    config = OmegaConf.create()
    for text in overrides:
        if is_command_line_only(text):
            raise ConfigError(
                f"{what} override '{text}' is a config-group choice, a Hydra setting, a deletion or a sweep: "
                "put it in the study's shared overrides, or set the group's keys one by one"
            )
        override = _parse(text)
        OmegaConf.update(config, override.key_or_group, override.value(), merge=True, force_add=True)
    return OmegaConf.to_container(config)


def job_overrides(shared: Sequence[str], variant: Sequence[str], extra: Sequence[str]) -> tuple[list[str], dict]:
    """A job's overrides split into the sweep's command line (what only it can hold, from ``shared`` and ``extra``)
    and its config file (every setting, in the order shared → variant → extra, so a variant's own value beats the
    study's shared one and the caller's beats both; on the command line Hydra would apply them last)."""
    command_line = [text for text in (*shared, *extra) if is_command_line_only(text)]
    settings = [text for text in (*shared,) if not is_command_line_only(text)]
    settings += list(variant) + [text for text in extra if not is_command_line_only(text)]
    return command_line, overrides_to_config(settings)


def _write_group(folder: Path, group: str, options: dict[str, dict[str, Any]], comment: str) -> None:
    """The generated config group: exactly ``options`` (name → content), each a ``# @package _global_`` file; the
    options of an earlier call are removed, so the folder shows what the last sweep ran."""
    for stale in (folder / group).glob("*.yaml"):
        if stale.stem not in options:
            stale.unlink()
    for name, content in options.items():
        text = f"# @package _global_\n# {comment}\n" + OmegaConf.to_yaml(OmegaConf.create(content))
        atomic_write_text(folder / group / f"{name}.yaml", text)


def _identity(study: Study, job: Job) -> dict[str, Any]:
    """What a generated job file records about itself (its name is also its folder: ``hydra.sweep.subdir``)."""
    return {"study": study.name, "scale": study.scale, "variant": job.variant.name, "seed": job.seed, "name": job.name}


def _quoted(path: Path) -> str:
    """A path as a quoted string of Hydra's override grammar (spaces, '=' and the like stay literal)."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


# ------------------------------------------------------------------------------------------------------- training
def is_finished(job: Job) -> bool:
    """A training run is finished when its final model is complete (``save_pretrained`` writes config.json last)."""
    return all((job.final_model / name).is_file() for name in FINAL_FILES)


def has_checkpoint(job: Job) -> bool:
    from magicbokeh.training.checkpointing import list_checkpoints

    return bool(list_checkpoints(job.run_dir / "checkpoints"))


@contextlib.contextmanager
def _outside_the_running_app() -> Iterator[None]:
    """Hydra's compose API inside a running Hydra app (scripts/study.py): set the app's global state aside."""
    from hydra.core.global_hydra import GlobalHydra

    state = GlobalHydra.instance()
    running = state.hydra
    state.clear()
    try:
        yield
    finally:
        state.clear()
        if running is not None:
            state.initialize(running)


def check_training_configs(study: Study, launcher: str = "basic", launcher_overrides: Sequence[str] = ()) -> None:
    """Before anything runs, in one line each: a variant whose training config does not compose (a typo), SD2.1
    weights a variant would load and that are missing, a launcher this machine cannot use (Slurm without srun).
    Otherwise every job of the sweep would start, load for minutes and fail alike."""
    from magicbokeh.models.build import check_sd21_folder
    from magicbokeh.utils.cli import check_overrides

    with _outside_the_running_app():
        for variant in study.variants:
            overrides = [f"experiment={study.experiment}", *study.train_overrides, *variant.train,
                         *study.extra_train_overrides]  # fmt: skip
            try:
                cfg = compose_config("train", overrides)
            except Exception as error:  # Hydra's composition errors: unknown key, bad value, missing option
                raise ConfigError(f"variant {variant.name} does not compose: {str(error).splitlines()[0]}") from None
            if cfg.model.get("sd21_path") is not None:
                check_sd21_folder(Path(str(cfg.model.sd21_path)))
        check_overrides("train", [f"hydra/launcher={launcher}", *launcher_overrides], multirun=True)


def training_sweep_command(study: Study, jobs: Sequence[Job], launcher: str, launcher_overrides: Sequence[str],
                           python: str = sys.executable) -> list[str]:  # fmt: skip
    """Write the ``study_run`` options of ``jobs`` and return the ONE ``scripts/train.py`` multirun that trains
    them (every job: the experiment, the study's and the caller's overrides, then its own file)."""
    configs = study.out_dir / "sweep" / "train"
    command_line: list[str] = []
    options = {}
    for job in jobs:
        command_line, content = job_overrides(study.train_overrides, job.variant.train, study.extra_train_overrides)
        content.update(
            seed=job.seed,
            resume="latest" if has_checkpoint(job) else None,
            # the experiment's own results file (the smoke's results/smoke.json) is not a study run's to write:
            # the study writes its table's
            results_name=None,
            study_run=_identity(study, job),
        )
        options[job.name] = content
    _write_group(configs, RUN_GROUP, options, f"scripts/study.py: {study.name}/{study.scale}, a training run")
    return [
        python, str(REPO_ROOT / "scripts" / "train.py"), "--multirun", "--config-dir", str(configs),
        f"hydra/launcher={launcher}", *launcher_overrides,
        f"experiment={study.experiment}", *command_line,
        f"+{RUN_GROUP}={','.join(job.name for job in jobs)}",
        f"run_id={study.name}_{study.scale}",
        f"hydra.sweep.dir={_quoted(study.out_dir / 'runs')}", "hydra.sweep.subdir=${study_run.name}",
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------------- evaluation
def _summary(job: Job) -> dict | None:
    path = job.eval_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def evaluation_state(job: Job, metrics: Sequence[str]) -> str:
    """``done`` (scores of this checkpoint with every registered metric of the table; a measure such as
    controllability may be undefined on a benchmark), ``stale`` (scores of another checkpoint) or ``todo``."""
    from magicbokeh.evaluation.manifest import MANIFEST_NAME, checkpoint_record
    from magicbokeh.evaluation.metrics import list_metrics

    summary, manifest = _summary(job), job.eval_dir / MANIFEST_NAME
    if not manifest.is_file():
        return "todo"
    stored = (json.loads(manifest.read_text()).get("predictions") or {}).get("checkpoint") or {}
    if stored.get("sha256") != checkpoint_record(job.final_model)["sha256"]:
        return "stale"
    if summary is None:
        return "todo"
    registered = {info.name for info in list_metrics()}
    scores = summary.get("methods", {}).get("model", {})
    return "done" if all(metric in scores for metric in metrics if metric in registered) else "todo"


def evaluation_sweep_command(study: Study, jobs: Sequence[Job], launcher: str, launcher_overrides: Sequence[str],
                             python: str = sys.executable) -> list[str]:  # fmt: skip
    """Write the ``study_eval`` options of ``jobs`` and return the ONE ``scripts/evaluate.py`` multirun that scores
    their final models (the ``model`` method only)."""
    configs = study.out_dir / "sweep" / "evaluate"
    command_line: list[str] = []
    options = {}
    for job in jobs:
        command_line, content = job_overrides(study.eval_overrides, job.variant.evaluate, study.extra_eval_overrides)
        content.update(
            ckpt=str(job.final_model),
            overwrite=evaluation_state(job, study.metrics) == "stale",
            study_eval=_identity(study, job),
        )
        options[job.name] = content
    _write_group(configs, EVAL_GROUP, options, f"scripts/study.py: {study.name}/{study.scale}, an evaluation")
    return [
        python, str(REPO_ROOT / "scripts" / "evaluate.py"), "--multirun", "--config-dir", str(configs),
        f"hydra/launcher={launcher}", *launcher_overrides,
        f"benchmark={study.benchmark}", "methods=[model]", *command_line,
        f"+{EVAL_GROUP}={','.join(job.name for job in jobs)}",
        f"run_id={study.name}_{study.scale}",
        f"hydra.sweep.dir={_quoted(study.out_dir / 'eval')}", "hydra.sweep.subdir=${study_eval.name}",
    ]  # fmt: skip


def read_scores(study: Study) -> dict[str, dict[int, dict[str, float | None]]]:
    """``{variant: {seed: {metric: benchmark mean}}}`` from every evaluation's ``summary.json``."""
    scores: dict[str, dict[int, dict[str, float | None]]] = {}
    for job in study.jobs:
        summary = _summary(job)
        if summary is None:
            raise DatasetError(f"no scores for {job.name} in '{job.eval_dir}': run the evaluate stage first")
        model = summary["methods"].get("model", {})
        scores.setdefault(job.variant.name, {})[job.seed] = {
            metric: (model.get(metric) or {}).get("mean") for metric in study.metrics
        }
    return scores


# ---------------------------------------------------------------------------------------------------------- runner
def run_stage_command(command: list[str], what: str) -> None:
    """Run a script in the repository with this environment; its output streams to ours."""
    logger.info("%s: %s", what, " ".join(command))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    # The caller's working directory: relative paths of the config (outputs/, data/) mean the same in the scripts.
    # Its own process group, which holds the launcher's jobs too (submitit's local subprocesses): when the study
    # stops (Ctrl-C, or SIGTERM, which scripts/study.py turns into SystemExit) they stop with it instead of training
    # on unseen. Checkpoints are published atomically, so a rerun resumes from the last complete one.
    process = subprocess.Popen(command, cwd=Path.cwd(), env=env, process_group=0)
    try:
        code = process.wait()
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    if code != 0:
        raise ConfigError(f"the {what} step failed (exit {code}); rerun the study to continue it")


@contextlib.contextmanager
def timed_stage(study: Study, stage: str, jobs: Sequence[str]) -> Iterator[None]:
    """Append the wall time of ``stage`` to the study's timing log, whether it finished or not."""
    from datetime import datetime, timezone

    started, completed = time.perf_counter(), False
    try:
        yield
        completed = True
    finally:
        record = {
            "stage": stage,
            "jobs": list(jobs),
            "seconds": round(time.perf_counter() - started, 1),
            "completed": completed,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with open(study.out_dir / TIMING_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")


def read_timing(study: Study) -> list[dict[str, Any]]:
    """The records of the study's timing log, oldest first (none before the first stage that did work)."""
    path = study.out_dir / TIMING_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_study(
    study: Study,
    stages: Sequence[str] = STAGES,
    *,
    launcher: str = "local",
    launcher_overrides: Sequence[str] = (),
    eval_launcher: str = "basic",
    eval_launcher_overrides: Sequence[str] = (),
    results: str | None = None,
    figure: str | os.PathLike | None = None,
    command: str | None = None,
) -> dict | None:
    """Train, evaluate and tabulate ``study`` (module docstring); returns the table's figures (None without the
    table stage). Each stage only does what is missing."""
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown or not stages:
        raise ConfigError(f"unknown or no stage(s) {list(stages)}; stages are a subset of {', '.join(STAGES)}")
    jobs = study.jobs
    study.out_dir.mkdir(parents=True, exist_ok=True)
    if "prepare" in stages:
        for step in study.prepare:
            if Path(step["creates"]).exists():
                continue
            script, *arguments = step["command"]
            with timed_stage(study, "prepare", [step["creates"]]):
                prepare = [sys.executable, str(REPO_ROOT / script), *arguments]
                run_stage_command(prepare, f"prepare ({step['creates']})")
            if not Path(step["creates"]).exists():
                raise DatasetError(f"the prepare step '{' '.join(step['command'])}' did not create {step['creates']}")
    if "train" in stages:
        todo = [job for job in jobs if not is_finished(job)]
        logger.info("study %s (%s): %d of %d training runs to do (%s)", study.name, study.scale, len(todo), len(jobs),
                    ", ".join(j.name + (" resumes" if has_checkpoint(j) else "") for j in todo) or "none")  # fmt: skip
        if todo:
            with timed_stage(study, "train", [job.name for job in todo]):
                check_training_configs(study, launcher, launcher_overrides)
                sweep = training_sweep_command(study, todo, launcher, launcher_overrides)
                run_stage_command(sweep, "training")
    if "evaluate" in stages:
        missing = [job.name for job in jobs if not is_finished(job)]
        if missing:
            raise DatasetError(f"no final model for {', '.join(missing)}: run the train stage first (it resumes)")
        todo = [job for job in jobs if evaluation_state(job, study.metrics) != "done"]
        logger.info("study %s (%s): %d of %d evaluations to do", study.name, study.scale, len(todo), len(jobs))
        if todo:
            with timed_stage(study, "evaluate", [job.name for job in todo]):
                sweep = evaluation_sweep_command(study, todo, eval_launcher, eval_launcher_overrides)
                run_stage_command(sweep, "evaluation")
    if "table" not in stages:
        return None
    from magicbokeh.training.study_report import write_study_report

    return write_study_report(
        study, read_scores(study), read_timing(study), results=results, figure=figure, command=command
    )
