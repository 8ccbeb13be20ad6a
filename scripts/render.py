"""Render photos with MagicBokeh (or the classical renderer): a file or a folder in, outputs out (configs/render.yaml).

python scripts/render.py input=photo.jpg ckpt=CKPT_DIR K=16 focus.point=[420,310]
python scripts/render.py input=photos/ ckpt=CKPT_DIR disparity=maps/ save_maps=true output=out/
python scripts/render.py input=photo.jpg ckpt=CKPT_DIR sweep.focus=[0.2,0.5,0.8] sweep.K=[0,8,16,32]
python scripts/render.py mode=classical input=photo.jpg disparity=photo.npy scale=1 K=24
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from magicbokeh.utils.cli import exit_on_user_error, set_offline_defaults

set_offline_defaults()


@hydra.main(config_path="../configs", config_name="render", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    import torch
    from hydra.utils import instantiate

    from magicbokeh.depth import build_depth_model
    from magicbokeh.depth.focus import load_saliency_model
    from magicbokeh.errors import ConfigError
    from magicbokeh.inference.batch import (
        LazyDepthModel,
        RenderOptions,
        collect_inputs,
        focus_from_config,
        render_inputs,
    )
    from magicbokeh.inference.classical import ClassicalPipeline
    from magicbokeh.inference.pipeline import MagicBokehPipeline
    from magicbokeh.models import MagicBokehModel
    from magicbokeh.utils.seeding import seed_everything

    if cfg.input is None:
        raise ConfigError("set input=PATH (an image file or a folder of images)")
    collect_inputs(cfg.input)  # a typo in the path fails now, not after loading the network
    seed_everything(cfg.seed)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    depth_model = LazyDepthModel(
        lambda: build_depth_model(
            cfg.depth_model.size,
            cfg.depth_model.weights,
            input_size=cfg.depth_model.input_size,
            config_key="depth_model.weights",
            device=device,
        )
    )
    saliency_model = load_saliency_model(cfg.saliency, config_key="saliency", device=device)
    if cfg.mode == "model":
        if cfg.ckpt is None:
            raise ConfigError("mode=model needs ckpt=CHECKPOINT_DIR (or use mode=classical for the optics renderer)")
        pipeline = MagicBokehPipeline(
            MagicBokehModel.from_pretrained(cfg.ckpt, sd21_path=cfg.sd21),
            depth_model,
            tile_size=cfg.tile.size,
            tile_stride=cfg.tile.stride,
            tile_batch_size=cfg.tile.batch,
            color_fix=cfg.color_fix,
            device=device,
            precision=cfg.precision,
            merge_lora=cfg.merge_lora,
            saliency_model=saliency_model,
        )
    elif cfg.mode == "classical":
        pipeline = ClassicalPipeline(
            instantiate(cfg.renderer), device=device, depth_model=depth_model, saliency_model=saliency_model
        )
    else:
        raise ConfigError(f"mode must be 'model' or 'classical', got {cfg.mode!r}")

    options = RenderOptions(
        K=float(cfg.K),
        scale=float(cfg.scale),
        focus=focus_from_config(cfg.focus.value, cfg.focus.point),
        save_maps=cfg.save_maps,
        bit_depth=cfg.bit_depth,
        sweep_focus=OmegaConf.to_container(cfg.sweep.focus) if cfg.sweep.focus is not None else None,
        sweep_K=list(cfg.sweep.K) if cfg.sweep.K is not None else None,
        sweep_fps=cfg.sweep.fps,
        sweep_mp4=cfg.sweep.mp4,
        sweep_max_side=cfg.sweep.max_side,
    )
    written = render_inputs(pipeline, cfg.input, cfg.output, options, disparity=cfg.disparity, mask=cfg.focus.mask)
    print(f"wrote {len(written)} image(s) to {cfg.output}")


if __name__ == "__main__":
    main()
