"""Interactive demo: click on a photo to focus, drag K, compare the network with the classical renderer (Gradio).

python scripts/demo.py                    # no weights: classical mode on the shipped samples (motorcycle first)
python scripts/demo.py ckpt=CKPT_DIR      # model mode too
python scripts/demo.py server.port=0 ui.scale=4 renderer.max_coc_px=48

Served on 127.0.0.1 (configs/demo.yaml: server.*); nothing is sent anywhere else. Ctrl-C stops it.
"""

from __future__ import annotations

from omegaconf import DictConfig

from magicbokeh.utils.cli import hydra_main


@hydra_main("demo")
def main(cfg: DictConfig) -> None:
    from pathlib import Path

    import torch
    from hydra.utils import instantiate

    from magicbokeh.depth import build_depth_model
    from magicbokeh.depth.focus import load_saliency_model
    from magicbokeh.errors import ConfigError
    from magicbokeh.inference.batch import LazyDepthModel
    from magicbokeh.inference.classical import ClassicalPipeline
    from magicbokeh.inference.demo import BokehDemo, PageDefaults, build_app, launch, shipped_samples
    from magicbokeh.inference.pipeline import MagicBokehPipeline
    from magicbokeh.inference.presets import get_preset
    from magicbokeh.models import MagicBokehModel
    from magicbokeh.utils.seeding import seed_everything

    seed_everything(cfg.seed)
    preset = get_preset(cfg.preset)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    depth_model = LazyDepthModel(
        lambda: build_depth_model(
            cfg.depth_model.size,
            cfg.depth_model.weights,
            input_size=cfg.depth_model.input_size,
            preprocessing=preset.depth_preprocessing,
            config_key="depth_model.weights",
            device=device,
        )
    )
    saliency_model = load_saliency_model(cfg.saliency, config_key="saliency", device=device)
    classical = ClassicalPipeline(
        instantiate(cfg.renderer), device=device, depth_model=depth_model, saliency_model=saliency_model
    )
    model = None
    if cfg.ckpt is not None:
        model = MagicBokehPipeline(
            MagicBokehModel.from_pretrained(cfg.ckpt, sd21_path=cfg.sd21),
            depth_model,
            preset=preset.name,
            tile_size=cfg.tile.size,
            tile_stride=cfg.tile.stride,
            tile_batch_size=cfg.tile.batch,
            color_fix=cfg.color_fix,
            device=device,
            precision=cfg.precision,
            merge_lora=cfg.merge_lora,
            saliency_model=saliency_model,
        )
    if cfg.ui.mode not in ("auto", "model", "classical"):
        raise ConfigError(f"ui.mode must be auto, model or classical, got {cfg.ui.mode!r}")
    mode = ("model" if model is not None else "classical") if cfg.ui.mode == "auto" else cfg.ui.mode
    weights = cfg.depth_model.weights
    depth_note = (
        ""
        if weights is not None and Path(weights).exists()
        else f"No depth model (`depth_model.weights` = `{weights}` does not exist): photos need an uploaded "
        "disparity map; the motorcycle and the synthetic scenes carry their own."
    )
    demo = BokehDemo(
        classical,
        model,
        shipped_samples(cfg.samples_dir),
        max_input_pixels=cfg.limits.max_input_pixels,
        max_output_pixels=cfg.limits.max_output_pixels,
        output_dir=cfg.output,
        sweep_frames=cfg.sweep.frames,
        sweep_fps=cfg.sweep.fps,
        sweep_max_side=cfg.sweep.max_side,
        depth_note=depth_note,
    )
    defaults = PageDefaults(
        sample=cfg.ui.sample, K=float(cfg.ui.K), scale=int(cfg.ui.scale), mode=mode, color_fix=cfg.ui.color_fix
    )
    app = build_app(demo, defaults)
    Path(cfg.output).mkdir(parents=True, exist_ok=True)
    url = launch(
        app,
        host=cfg.server.host,
        port=cfg.server.port,
        max_upload=cfg.server.max_upload,
        allowed_paths=[str(Path(cfg.output).resolve())],
    )
    print(f"MagicBokeh demo running on {url} (Ctrl-C to stop)", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()


if __name__ == "__main__":
    main()
