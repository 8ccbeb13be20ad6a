"""``train(cfg)``: build everything from the config once, run :class:`Trainer`, evaluate, save the final model.

Entry point: ``python scripts/train.py experiment=smoke`` (one process) or ``accelerate launch scripts/train.py
experiment=paper`` (many). The run directory is rank 0's Hydra output directory, broadcast to the other ranks
(:func:`~magicbokeh.training.run_dir.choose_run_dir`), so a launch writes into exactly one directory with or
without ``run_id=NAME``.

Run directory layout::

    run_uid  metrics.jsonl  wandb/  checkpoints/step_NNNNNN/  val/step_NNNNNN_<task>.png
    init_eval.json       validation scores of the model before training (its own initialisation)
    init_test_eval.json  the same on the test sets (data.test_bokeh / data.test_sr), when the data config has them
    final/               model.save_pretrained (what scripts/evaluate.py ckpt=... consumes)
    final_eval.{json,md} PSNR/LPIPS per set (validation, test) and task: input vs initialisation vs trained
                         (+ colour-fixed variants)

With ``results_name`` set (``experiment=smoke``: ``smoke``), the final tables also go to ``results/<name>.json``
(:mod:`magicbokeh.utils.results`), with the command, commit and hardware that made them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from magicbokeh.depth.sources import depth_source
from magicbokeh.errors import ConfigError
from magicbokeh.training.base_pretrain import fit_autoencoder, load_standin_vae
from magicbokeh.training.checkpointing import list_checkpoints, read_contents
from magicbokeh.training.data_streams import BatchStream
from magicbokeh.training.defocus_source import DepthDefocus
from magicbokeh.training.losses import ReconstructionLoss, build_lpips
from magicbokeh.training.optim import build_lr_scheduler, build_optimizer
from magicbokeh.training.phases import PhaseSchedule, phase_for_step
from magicbokeh.training.run_dir import choose_run_dir
from magicbokeh.training.tracking import run_uid, tracker_settings
from magicbokeh.training.trainer import PhaseSettings, Trainer, TrainerSettings
from magicbokeh.training.validation import Validator, final_evaluation, write_final_results
from magicbokeh.utils.cli import set_offline_defaults
from magicbokeh.utils.distributed import build_accelerator, distributed_state
from magicbokeh.utils.files import atomic_write_text
from magicbokeh.utils.logging import get_logger
from magicbokeh.utils.seeding import seed_everything

logger = get_logger(__name__)

INIT_EVAL_FILE = "init_eval.json"
INIT_TEST_EVAL_FILE = "init_test_eval.json"
FINAL_MODEL_DIR = "final"


def settings_from_config(trainer_cfg: DictConfig) -> TrainerSettings:
    """``configs/trainer/*.yaml`` → typed settings (the only place the trainer node is read)."""
    schedule = PhaseSchedule.from_config(**OmegaConf.to_container(trainer_cfg.schedule, resolve=True))
    phases = {
        name: PhaseSettings(**OmegaConf.to_container(node, resolve=True)) for name, node in trainer_cfg.phases.items()
    }
    return TrainerSettings(
        max_steps=int(trainer_cfg.max_steps),
        schedule=schedule,
        phases=phases,
        grad_accum_steps=int(trainer_cfg.grad_accum_steps),
        max_grad_norm=trainer_cfg.max_grad_norm,
        log_every=int(trainer_cfg.log_every),
        val_every=int(trainer_cfg.val_every),
        checkpoint_every=int(trainer_cfg.checkpoint_every),
        keep_last=int(trainer_cfg.keep_last),
        max_consecutive_skips=int(trainer_cfg.max_consecutive_skips),
    )


def vsd_settings_from_config(trainer_cfg: DictConfig, settings: TrainerSettings):
    """``trainer.vsd`` → :class:`~magicbokeh.training.vsd.VSDSettings`, or None when no scheduled phase uses VSD.

    A phase with ``vsd_weight > 0`` while ``trainer.vsd.enabled`` is false is an error (it would silently train
    without the term); ``enabled`` with no weighted phase builds nothing (two UNets for no loss) and says so.
    """
    vsd_cfg = trainer_cfg.get("vsd")
    enabled = vsd_cfg is not None and bool(vsd_cfg.enabled)
    phases = settings.schedule.phases_used(settings.max_steps)
    weighted = [phase for phase in phases if settings.phases[phase].vsd_weight > 0]
    if weighted and not enabled:
        raise ConfigError(f"phase(s) {weighted} set vsd_weight > 0 but trainer.vsd.enabled is false; enable it")
    if not enabled:
        return None
    if not weighted:
        logger.warning("trainer.vsd.enabled but no scheduled phase has vsd_weight > 0: VSD is not built")
        return None
    from magicbokeh.training.vsd import VSDSettings

    values = OmegaConf.to_container(vsd_cfg, resolve=True)
    values.pop("enabled")
    return VSDSettings(**values)


def _job_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config without Hydra's own node (it holds run-time-only values such as hydra.job.num)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(container), resolve=True)


def _build_accelerator(trainer_cfg: DictConfig, log_with: list):
    from accelerate.utils import DistributedDataParallelKwargs

    # Each phase leaves the other groups without gradients: DDP must look for unused parameters (trainer.py).
    return build_accelerator(
        str(trainer_cfg.mixed_precision),
        log_with=log_with,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _resume_checkpoint(resume: str | None, checkpoint_dir: Path) -> Path | None:
    """``resume``: None (a new run), ``latest`` (the newest checkpoint of this run directory) or a folder."""
    if resume is None:
        return None
    if str(resume) == "latest":
        found = list_checkpoints(checkpoint_dir)
        if not found:
            raise ConfigError(f"resume=latest but {checkpoint_dir} holds no checkpoint yet")
        return found[-1]
    return Path(str(resume))


def _defocus_depth(node: DictConfig | None, device: torch.device) -> DepthDefocus | None:
    """``trainer.defocus_depth`` → None for ``gt`` (the dataset's defocus), else the depth model its source names
    (``teacher`` or ``student`` node) wrapped in :class:`DepthDefocus`."""
    if node is None:
        return None
    source = depth_source(str(node.source))
    if not source.estimated:
        return None
    return DepthDefocus(instantiate(node[source.model], device=device), source.name)


def _training_datasets(cfg: DictConfig, sources: set[str]) -> dict[str, Any]:
    """The datasets behind the scheduled phases' streams: ``bokeh``, ``sr`` and/or ``mixed`` (joint ablation)."""
    datasets: dict[str, Any] = {}
    if sources & {"bokeh", "mixed"}:
        datasets["bokeh"] = instantiate(cfg.data.bokeh_train)
    if sources & {"sr", "mixed"}:
        datasets["sr"] = instantiate(cfg.data.sr_train)
    if "mixed" in sources:
        from magicbokeh.data.samplers import MixedTaskDataset

        ratios = OmegaConf.to_container(cfg.trainer.mixed_ratio, resolve=True)
        datasets["mixed"] = MixedTaskDataset(
            {task: datasets[task] for task in ratios}, ratios, seed=int(cfg.seed), length=int(cfg.trainer.mixed_length)
        )
    unknown = sources - {"bokeh", "sr", "mixed"}
    if unknown:
        raise ConfigError(f"trainer.phases.*.data must be bokeh, sr or mixed, got {sorted(unknown)}")
    return {name: datasets[name] for name in sources}


def training_info(cfg: DictConfig) -> dict[str, Any]:
    """What the saved model records about its training data (``config.json`` → ``training``): the degradation
    (preset name and settings), crop size and CoC scale, so evaluation can flag a benchmark made another way."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    degradation = OmegaConf.to_container(cfg.degradation, resolve=True) if "degradation" in cfg else None
    if isinstance(degradation, dict):
        degradation.pop("_target_", None)
    return {
        "experiment": str(cfg.task_name),
        "degradation_preset": choices.get("degradation"),
        "degradation": degradation,
        "crop_size": OmegaConf.select(cfg, "data.crop_size"),
        "max_coc_px": OmegaConf.select(cfg, "data.max_coc_px"),
    }


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured model; returns the final scores (``{set: {column: {metric: value}}}``) and the measured
    steps/s."""
    run_started = time.perf_counter()
    set_offline_defaults()
    run_dir = choose_run_dir(cfg, distributed_state())
    trainer_cfg = cfg.trainer
    settings = settings_from_config(trainer_cfg)
    resume_from = _resume_checkpoint(cfg.resume, run_dir / "checkpoints")
    resume_step = read_contents(resume_from)["step"] if resume_from is not None else None
    uid = run_uid(run_dir, resuming=resume_from is not None) if PartialState().is_main_process else None
    logger_cfg = OmegaConf.to_container(cfg.logger, resolve=True)
    log_with, tracker_kwargs = tracker_settings(logger_cfg, run_dir, uid, resume_step)
    accelerator = _build_accelerator(trainer_cfg, log_with)
    try:
        return _train(cfg, settings, run_dir, accelerator, resume_from, logger_cfg, tracker_kwargs, run_started)
    finally:
        # Finishes every tracker (closes metrics.jsonl, ends the wandb run) even when training raised.
        accelerator.end_training()


def _train(
    cfg: DictConfig,
    settings: TrainerSettings,
    run_dir: Path,
    accelerator,
    resume_from: Path | None,
    logger_cfg: dict[str, Any],
    tracker_kwargs: dict[str, Any],
    run_started: float,
) -> dict[str, Any]:
    """The body of :func:`train`; ``run_started`` (``time.perf_counter()`` when ``train`` was called) times the whole
    run for the results file."""
    trainer_cfg = cfg.trainer
    seed_everything(int(cfg.seed))

    if trainer_cfg.num_threads is not None:
        # On a shared CPU, oversubscribed intra-op threads spin against each other; 1 thread is often faster.
        torch.set_num_threads(int(trainer_cfg.num_threads))

    # ---- objects, built once from the config
    model = instantiate(cfg.model)
    model.training_info = training_info(cfg)
    vsd_settings = vsd_settings_from_config(trainer_cfg, settings)
    phases = settings.schedule.phases_used(settings.max_steps)
    sources = {settings.phases[p].data for p in phases}
    base_cfg = trainer_cfg.base_pretrain
    if base_cfg.init_from is not None and resume_from is None:  # a resumed run's checkpoint holds the fitted VAE
        load_standin_vae(model, base_cfg.init_from)
    fit_base = base_cfg.steps > 0 and resume_from is None
    datasets = _training_datasets(cfg, sources | (set(base_cfg.data) if fit_base else set()))
    if fit_base:
        # Before DDP wrapping, identically on every rank (same seed, same samples): see base_pretrain.py.
        base_streams = [
            BatchStream(datasets[name], int(base_cfg.batch_size), seed=int(cfg.seed) + 1) for name in base_cfg.data
        ]
        model.to(accelerator.device)
        fit_autoencoder(
            model,
            base_streams,
            int(base_cfg.steps),
            float(base_cfg.lr),
            accelerator.device,
            images=list(base_cfg.images),
        )
    for phase in phases:  # every scheduled group trainable now, so DDP registers it (see trainer.py)
        for param in model.trainable_parameters(phase):
            param.requires_grad_(True)
    optimizer_cfg = OmegaConf.to_container(trainer_cfg.optimizer, resolve=True)
    optimizers, schedulers = {}, {}
    for phase in phases:
        phase_steps = sum(phase_for_step(step, settings.schedule) == phase for step in range(settings.max_steps))
        optimizers[phase] = build_optimizer(
            model.trainable_parameters(phase), lr=settings.phases[phase].lr, **optimizer_cfg
        )
        schedulers[phase] = build_lr_scheduler(
            optimizers[phase], settings.phases[phase].warmup_steps, str(trainer_cfg.lr_schedule), phase_steps
        )
    lpips_model = None
    if any(settings.phases[p].lpips_weight > 0 for p in phases) or trainer_cfg.validation.lpips:
        lpips_model = build_lpips(
            str(trainer_cfg.loss.lpips_net), cfg.paths.torchvision_weights, bool(trainer_cfg.loss.random_backbone)
        ).to(accelerator.device)
    losses = {
        phase: ReconstructionLoss(settings.phases[phase].l2_weight, settings.phases[phase].lpips_weight, lpips_model)
        for phase in phases
    }
    defocus_depth = _defocus_depth(trainer_cfg.defocus_depth, accelerator.device)

    vsd = None
    if vsd_settings is not None:  # optional latent VSD regulariser (magicbokeh/training/vsd.py)
        from magicbokeh.training.vsd import build_latent_vsd

        vsd = build_latent_vsd(
            model, vsd_settings, seed=int(cfg.seed), optimizer_kwargs=optimizer_cfg,
            max_grad_norm=trainer_cfg.max_grad_norm,
        )  # fmt: skip

    prepared = accelerator.prepare(model, *optimizers.values())
    model, optimizers = prepared[0], dict(zip(optimizers, prepared[1:]))
    if vsd is not None:
        vsd.attach(accelerator)
    streams = {
        name: BatchStream(
            dataset,
            int(cfg.data.batch_size),
            seed=int(cfg.seed),
            num_workers=int(cfg.data.num_workers),
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
        )
        for name, dataset in datasets.items()
        if name in sources
    }
    validation_cfg = trainer_cfg.validation
    validator = Validator(
        {"bokeh": instantiate(cfg.data.val_bokeh), "sr": instantiate(cfg.data.val_sr)},
        batch_size=int(validation_cfg.batch_size),
        out_dir=run_dir / "val",
        lpips_model=lpips_model if validation_cfg.lpips else None,
        grid_rows=int(validation_cfg.grid_rows),
        color_fix=str(validation_cfg.color_fix),
    )
    test_validator = None
    if OmegaConf.select(cfg, "data.test_bokeh") is not None and OmegaConf.select(cfg, "data.test_sr") is not None:
        test_validator = Validator(
            {"bokeh": instantiate(cfg.data.test_bokeh), "sr": instantiate(cfg.data.test_sr)},
            batch_size=int(validation_cfg.batch_size),
            out_dir=run_dir / "test",
            lpips_model=lpips_model if validation_cfg.lpips else None,
            color_fix=str(validation_cfg.color_fix),
        )
    trainer = Trainer(
        accelerator=accelerator,
        model=model,
        streams=streams,
        losses=losses,
        optimizers=optimizers,
        schedulers=schedulers,
        settings=settings,
        checkpoint_dir=run_dir / "checkpoints",
        validator=validator,
        defocus_depth=defocus_depth,
        vsd=vsd,
    )

    # ---- resume, start the trackers (metrics.jsonl drops what the interrupted run logged after the checkpoint)
    if resume_from is not None:
        trainer.resume(resume_from)
    accelerator.init_trackers(str(logger_cfg.get("project", "magicbokeh")), _job_config(cfg), tracker_kwargs)
    unwrapped = accelerator.unwrap_model(model)
    init_scores = _initial_scores(trainer, validator, unwrapped, accelerator, run_dir / INIT_EVAL_FILE)
    evaluation_sets = {"validation": (validator, init_scores)}
    if test_validator is not None:
        init_test = _initial_scores(
            trainer, test_validator, unwrapped, accelerator, run_dir / INIT_TEST_EVAL_FILE, grids=False
        )
        evaluation_sets["test"] = (test_validator, init_test)

    # ---- train
    started = time.perf_counter()
    first_step = trainer.step
    trainer.fit()
    training_seconds = time.perf_counter() - started
    steps_per_s = (trainer.step - first_step) / max(training_seconds, 1e-9)
    _check_ranks_agree(accelerator, unwrapped)

    # ---- save and evaluate
    results: dict[str, Any] = {"steps_per_s": steps_per_s, "run_dir": str(run_dir)}
    if accelerator.is_main_process:
        unwrapped.save_pretrained(run_dir / FINAL_MODEL_DIR)
        logger.info("final model saved to %s", run_dir / FINAL_MODEL_DIR)
        results["scores"] = final_evaluation(evaluation_sets, unwrapped, accelerator.device, run_dir)
        for set_name, prefix in (("validation", "final"), ("test", "final_test")):
            if set_name in results["scores"]:
                trained = results["scores"][set_name]["trained"]
                accelerator.log({f"{prefix}/{k}": v for k, v in trained.items()}, step=trainer.step)
        if cfg.get("results_name"):
            timing = {
                "steps": trainer.step - first_step,
                "training_seconds": training_seconds,
                "run_seconds": time.perf_counter() - run_started,
                "steps_per_s": steps_per_s,
                "torch_threads": torch.get_num_threads(),
            }
            tasks = list(validator.datasets)
            write_final_results(str(cfg.results_name), results["scores"], tasks, timing, cfg.task_name, int(cfg.seed))
    accelerator.wait_for_everyone()
    return results


def _check_ranks_agree(accelerator, model: torch.nn.Module) -> None:
    """Every rank must end with the same weights: each trained on its own shard, so a gradient that was not
    all-reduced (e.g. a group DDP failed to register) would show up here as differing parameter sums."""
    if accelerator.num_processes == 1:
        return
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().to(accelerator.device)
    totals = accelerator.gather(total[None]).cpu()
    if not torch.allclose(totals, totals[0].expand_as(totals), rtol=1e-9, atol=0.0):
        raise RuntimeError(f"ranks ended training with different weights (parameter sums {totals.tolist()})")
    logger.info("parameters identical on all %d ranks (sum %.10g)", accelerator.num_processes, totals[0].item())


def _initial_scores(trainer, validator, model, accelerator, path: Path, grids: bool = True) -> dict[str, float]:
    """Held-out scores of the untrained model, kept in ``path`` (``init_eval.json``, ``init_test_eval.json``) for a
    resumed run to report; a fresh run (step 0) always scores its own initialisation, even in a run directory an
    earlier run left one in. ``grids``: also write the step-0 image grids (validation only)."""
    if trainer.step != 0 and path.is_file():
        return json.loads(path.read_text())
    scores: dict[str, float] = {}
    if accelerator.is_main_process:
        if trainer.step != 0:
            logger.warning("resumed without %s: the initialisation column will be empty", path)
        else:
            scores = validator.evaluate_model(model, accelerator.device, step=0 if grids else None)
            atomic_write_text(path, json.dumps(scores, indent=1))
            if grids:  # the tracker's val/ curves are the validation set's only
                accelerator.log({f"val/{k}": v for k, v in scores.items()}, step=0)
    accelerator.wait_for_everyone()
    return scores
