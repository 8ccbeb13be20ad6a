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

    from magicbokeh.errors import ConfigError
    from magicbokeh.inference.demo import BokehDemo, PageDefaults, build_app, launch, shipped_samples
    from magicbokeh.inference.from_config import RenderingSetup
    from magicbokeh.utils.seeding import seed_everything

    seed_everything(cfg.seed)
    setup = RenderingSetup.from_config(cfg)
    classical = setup.classical()
    model = setup.network() if cfg.ckpt is not None else None
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
