"""Evaluate a checkpoint and the baselines on a benchmark: predict → score → report (configs/eval.yaml).

python scripts/evaluate.py benchmark=synthetic ckpt=outputs/train/<run>/final
python scripts/evaluate.py benchmark=ebb400_lq metrics=paper ckpt=... run_id=ebb   # rerun: resumes
python scripts/evaluate.py benchmark=ebb400_lq run_id=ebb stages=[score,report] metrics=paper   # rescore from disk
torchrun --nproc_per_node 2 scripts/evaluate.py ckpt=... run_id=NAME    # or accelerate launch: samples split
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from magicbokeh.utils.cli import hydra_main


@hydra_main("eval")
def main(cfg: DictConfig) -> None:
    import torch
    from accelerate.utils import gather_object
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from magicbokeh.data.benchmark_index import INDEX_NAME, load_benchmark_index
    from magicbokeh.data.builders import build_synthetic_benchmark, describe_degradation
    from magicbokeh.depth import build_depth_model
    from magicbokeh.errors import ConfigError
    from magicbokeh.evaluation.baselines import (
        MODEL_METHODS,
        RENDERER_METHODS,
        BicubicPipeline,
        PipelineSettings,
        build_methods,
    )
    from magicbokeh.evaluation.evaluate import degradation_mismatches, run_evaluation
    from magicbokeh.evaluation.inputs import Protocol, SampleInputs
    from magicbokeh.evaluation.manifest import benchmark_record, build_manifest, checkpoint_record, sha256_of_files
    from magicbokeh.inference.batch import LazyDepthModel
    from magicbokeh.inference.presets import get_preset
    from magicbokeh.models import MagicBokehModel
    from magicbokeh.optics import BokehRenderer
    from magicbokeh.utils.distributed import build_accelerator
    from magicbokeh.utils.logging import get_logger
    from magicbokeh.utils.results import environment
    from magicbokeh.utils.seeding import seed_everything

    logger = get_logger("evaluate")
    stages = list(cfg.stages)
    accelerator = build_accelerator()
    main_process = accelerator.is_main_process
    device = accelerator.device if cfg.device == "auto" else torch.device(cfg.device)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if accelerator.num_processes > 1:
        run_dirs = gather_object([str(run_dir)])
        if len(set(run_dirs)) > 1:
            raise ConfigError(
                f"the {accelerator.num_processes} processes got different run directories ({', '.join(run_dirs)}): "
                "pass run_id=NAME so that they share one"
            )
    seed_everything(int(cfg.seed))  # a randomly initialised depth model (tests) is then the same on every process

    # ---- objects, built once from the config
    protocol = Protocol(  # a benchmark config that predates the protocol keys means the index's maps and focus
        input=cfg.benchmark.input,
        disparity=cfg.benchmark.get("disparity", "index"),
        focus=_focus_rule(cfg.benchmark.get("focus", "index")),
    )
    pipeline = PipelineSettings(
        preset=cfg.pipeline.preset, tile_size=cfg.pipeline.tile.size, tile_stride=cfg.pipeline.tile.stride,
        tile_batch_size=cfg.pipeline.tile.batch, color_fix=cfg.pipeline.color_fix, precision=cfg.pipeline.precision,
    )  # fmt: skip
    preset = get_preset(pipeline.preset)
    renderer = instantiate(cfg.renderer)
    # The teacher for the depth axis' teacher_lq / teacher_hq; the degradation-aware model for everything else.
    depth_key = "depth_teacher" if protocol.disparity in ("teacher_lq", "teacher_hq") else "depth_model"
    depth = cfg[depth_key]
    depth_model = LazyDepthModel(
        lambda: build_depth_model(
            depth.size,
            depth.weights,
            input_size=depth.input_size,
            preprocessing=preset.depth_preprocessing,
            config_key=f"{depth_key}.weights",
            device=device,
        )
    )
    root = Path(cfg.benchmark.root)
    if not (root / INDEX_NAME).is_file() and cfg.benchmark.get("build") is not None:
        if main_process:
            settings = OmegaConf.to_container(cfg.benchmark.build, resolve=True)
            logger.info("benchmark %s not found at %s: building it (%s)", cfg.benchmark.name, root, settings)
            degradation = OmegaConf.to_container(cfg.degradation, resolve=True)
            info = describe_degradation(HydraConfig.get().runtime.choices.get("degradation"), degradation)
            build_synthetic_benchmark(root, instantiate(cfg.degradation), degradation_info=info, **settings)
        accelerator.wait_for_everyone()
    header, samples = load_benchmark_index(root)
    meta = header.get("meta", {})

    model = None
    if cfg.ckpt is not None and "predict" in stages:
        model = MagicBokehModel.from_pretrained(cfg.ckpt, sd21_path=cfg.sd21).eval()
        mismatches = degradation_mismatches(model.training_info, meta) if protocol.input == "lq" else []
        if mismatches and main_process:
            logger.warning(
                "benchmark '%s' was not made like the checkpoint's training data, so its scores measure another "
                "task:\n  %s\n%s",
                cfg.benchmark.name, "\n  ".join(mismatches), _matching_benchmark_hint(model.training_info, cfg),
            )  # fmt: skip
    names = list(cfg.methods)
    if model is None and "predict" in stages:
        skipped = [name for name in names if name in MODEL_METHODS]
        if skipped and main_process:
            logger.warning("no ckpt given: skipping %s", ", ".join(skipped))
        names = [name for name in names if name not in MODEL_METHODS]
    # Baselines must blur at the scale the benchmark's targets were rendered at (its builder records max_coc_px).
    benchmark_coc = meta.get("max_coc_px")
    if benchmark_coc is not None and isinstance(renderer, BokehRenderer) and renderer.max_coc_px != benchmark_coc:
        logger.info("renderer max_coc_px %g -> %g (from the benchmark's index)", renderer.max_coc_px, benchmark_coc)
        renderer.max_coc_px = float(benchmark_coc)
    methods = []
    if "predict" in stages:
        methods = build_methods(
            names, model=model, renderer=renderer, pipeline=pipeline, device=device,
            sample_posterior=cfg.sample_posterior,
        )  # fmt: skip
    # Every method's input goes through the same front end as the network's pipeline, preset included (the release's
    # 8-bit disparity and focus rules apply to the baselines' inputs too).
    front = BicubicPipeline(depth_model=depth_model, preset=preset)
    inputs = SampleInputs(protocol, run_dir, front)

    depth_record = None
    if any(inputs.needs_depth(sample) for sample in samples):
        depth_record = {
            "size": depth.size, "weights": depth.weights, "input_size": depth.input_size,
            "preprocessing": preset.depth_preprocessing, "role": depth_key,
        }  # fmt: skip
        weights = Path(depth.weights) if depth.weights is not None else None
        if weights is not None and weights.exists():  # a file, or a folder of them (HF layout, DepthModel.save)
            files = [weights] if weights.is_file() else sorted(p for p in weights.rglob("*") if p.is_file())
            depth_record["sha256"] = sha256_of_files(files)
    model_methods = any(name in MODEL_METHODS for name in names)
    renderer_record = {**OmegaConf.to_container(cfg.renderer, resolve=True), "max_coc_px": renderer.max_coc_px}
    manifest = build_manifest(
        benchmark=benchmark_record(root, cfg.benchmark.name),
        protocol=protocol.record(),
        checkpoint=checkpoint_record(cfg.ckpt) if model_methods else None,
        pipeline={**pipeline.record(), "sample_posterior": cfg.sample_posterior} if model_methods else None,
        renderer=renderer_record if any(name in RENDERER_METHODS for name in names) else None,
        depth_model=depth_record,
        scores={
            "crop_border": cfg.metrics.crop_border,
            "weights_dir": str(cfg.metrics.weights_dir),
            "torchvision_dir": str(cfg.metrics.torchvision_dir),
        },
        code={key: value for key, value in environment().items() if key in ("commit", "dirty")},
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    reference = cfg.benchmark.get("paper")
    run_evaluation(
        root,
        run_dir,
        methods,
        list(cfg.metrics.names),
        inputs,
        manifest=manifest,
        benchmark_name=cfg.benchmark.name,
        stages=stages,
        seeds=list(cfg.seeds),
        max_samples=cfg.benchmark.max_samples,
        metric_kwargs={
            "weights_dir": cfg.metrics.weights_dir,
            "torchvision_dir": cfg.metrics.torchvision_dir,
            "device": device,
            "crop_border": cfg.metrics.crop_border,
        },
        metric_batch_size=cfg.metrics.batch_size,
        num_grid_samples=cfg.report.num_grid_samples,
        reference=OmegaConf.to_container(reference, resolve=True) if reference is not None else None,
        overwrite=cfg.overwrite,
        accelerator=accelerator if accelerator.num_processes > 1 else None,
    )


def _matching_benchmark_hint(training_info: dict, cfg: DictConfig) -> str:
    """How to evaluate on a benchmark made like the checkpoint's training data (synthetic benchmarks are built)."""
    if cfg.benchmark.get("build") is None:
        return "Rebuild the benchmark with the checkpoint's degradation (scripts/make_dataset.py --degradation ...)."
    overrides = [f"benchmark.root={cfg.benchmark.root}_matched"]
    if training_info.get("degradation_preset"):
        overrides.append(f"degradation={training_info['degradation_preset']}")
    scale = (training_info.get("degradation") or {}).get("scale")
    if scale is not None:
        overrides.append(f"degradation.scale={scale:g}")
    if training_info.get("max_coc_px") is not None:
        overrides.append(f"benchmark.build.max_coc_px={training_info['max_coc_px']:g}")
    return f"A matching benchmark is built by adding: {' '.join(overrides)}"


def _focus_rule(value):
    """``benchmark.focus``: a rule name, or a number (a fixed focus disparity)."""
    return value if isinstance(value, str) else float(value)


if __name__ == "__main__":
    main()
