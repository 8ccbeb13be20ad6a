"""Evaluate a checkpoint and the baselines on a benchmark: predict → score → report (configs/eval.yaml).

python scripts/evaluate.py benchmark=synthetic ckpt=outputs/train/<run>/checkpoints/<step>/model
python scripts/evaluate.py benchmark=ebb400_lq metrics=paper ckpt=... run_id=ebb   # rerun: resumes
python scripts/evaluate.py run_id=ebb stages=[score,report] metrics=paper           # rescore from disk
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from magicbokeh.utils.cli import hydra_main


@hydra_main("eval")
def main(cfg: DictConfig) -> None:
    import torch
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from magicbokeh.data.benchmark_index import INDEX_NAME, load_benchmark_index
    from magicbokeh.data.builders import build_synthetic_benchmark
    from magicbokeh.evaluation.baselines import MODEL_METHODS, build_method
    from magicbokeh.evaluation.evaluate import run_evaluation
    from magicbokeh.models import MagicBokehModel
    from magicbokeh.optics import BokehRenderer
    from magicbokeh.utils.logging import get_logger

    logger = get_logger("evaluate")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    model = None
    if cfg.ckpt is not None and "predict" in cfg.stages:
        model = MagicBokehModel.from_pretrained(cfg.ckpt, sd21_path=cfg.sd21).to(device).eval()
    names = list(cfg.methods)
    if model is None and "predict" in cfg.stages:
        skipped = [name for name in names if name in MODEL_METHODS]
        if skipped:
            logger.warning("no ckpt given: skipping %s", ", ".join(skipped))
        names = [name for name in names if name not in MODEL_METHODS]
    renderer = instantiate(cfg.renderer)
    root = Path(cfg.benchmark.root)
    if not (root / INDEX_NAME).is_file() and cfg.benchmark.get("build") is not None:
        settings = OmegaConf.to_container(cfg.benchmark.build, resolve=True)
        logger.info("benchmark %s not found at %s: building it (%s)", cfg.benchmark.name, root, settings)
        build_synthetic_benchmark(root, instantiate(cfg.degradation), **settings)
    # Baselines must blur at the scale the benchmark's targets were rendered at (its builder records max_coc_px).
    header, _ = load_benchmark_index(root)
    benchmark_coc = header.get("meta", {}).get("max_coc_px")
    if benchmark_coc is not None and isinstance(renderer, BokehRenderer) and renderer.max_coc_px != benchmark_coc:
        logger.info("renderer max_coc_px %g -> %g (from the benchmark's index)", renderer.max_coc_px, benchmark_coc)
        renderer.max_coc_px = float(benchmark_coc)
    methods = [
        build_method(name, model=model, renderer=renderer, sample_posterior=cfg.sample_posterior) for name in names
    ]
    run_evaluation(
        root,
        HydraConfig.get().runtime.output_dir,
        methods,
        list(cfg.metrics.names),
        benchmark_name=cfg.benchmark.name,
        stages=list(cfg.stages),
        seeds=list(cfg.seeds),
        input_key=cfg.benchmark.input,
        max_samples=cfg.benchmark.max_samples,
        metric_kwargs={
            "weights_dir": cfg.metrics.weights_dir,
            "torchvision_dir": cfg.metrics.torchvision_dir,
            "device": device,
            "crop_border": cfg.metrics.crop_border,
        },
        num_grid_samples=cfg.report.num_grid_samples,
    )


if __name__ == "__main__":
    main()
