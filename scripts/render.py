"""Render photos with MagicBokeh (or the classical renderer): a file or a folder in, outputs out (configs/render.yaml).

python scripts/render.py input=photo.jpg ckpt=CKPT_DIR K=16 focus.point=[420,310]
python scripts/render.py input=photos/ ckpt=CKPT_DIR disparity=maps/ save_maps=true output=out/
python scripts/render.py input=photo.jpg ckpt=CKPT_DIR sweep.focus=[0.2,0.5,0.8] sweep.K=[0,8,16,32]
python scripts/render.py input=photo.png ckpt=CKPT_DIR preset=release disparity=photo.npy focus.mask=mask.png
python scripts/render.py mode=classical input=photo.jpg disparity=photo.npy scale=1 K=24
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from magicbokeh.utils.cli import hydra_main


def _number(cfg: DictConfig, key: str) -> float | None:
    """A numeric config value (null stays None); a word or a list is a ConfigError naming the key."""
    from magicbokeh.errors import ConfigError

    value = OmegaConf.select(cfg, key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return None if value is None else float(value)


def _number_list(cfg: DictConfig, key: str) -> list[float] | None:
    from magicbokeh.errors import ConfigError

    values = OmegaConf.select(cfg, key)
    if values is None:
        return None
    if not OmegaConf.is_list(values) or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise ConfigError(f"{key} must be a list of numbers, e.g. {key}=[0,8,16,32], got {values!r}")
    return [float(v) for v in values]


@hydra_main("render")
def main(cfg: DictConfig) -> None:
    from magicbokeh.errors import ConfigError
    from magicbokeh.inference.batch import RenderOptions, collect_inputs, focus_from_config, render_inputs
    from magicbokeh.inference.from_config import RenderingSetup
    from magicbokeh.inference.presets import get_preset
    from magicbokeh.utils.seeding import seed_everything

    if cfg.input is None:
        raise ConfigError("set input=PATH (an image file or a folder of images)")
    collect_inputs(cfg.input)  # a typo in the path fails now, not after loading the network
    preset = get_preset(cfg.preset)
    if cfg.mode == "classical" and preset.name != "default":
        raise ConfigError(f"preset={preset.name} describes the network's pipeline; mode=classical takes no preset")
    options = RenderOptions(
        K=_number(cfg, "K"),
        scale=_number(cfg, "scale"),
        focus=focus_from_config(_number(cfg, "focus.value"), cfg.focus.point),
        save_maps=cfg.save_maps,
        bit_depth=cfg.bit_depth,
        sweep_focus=OmegaConf.to_container(cfg.sweep.focus) if cfg.sweep.focus is not None else None,
        sweep_K=_number_list(cfg, "sweep.K"),
        sweep_fps=cfg.sweep.fps,
        sweep_mp4=cfg.sweep.mp4,
        sweep_max_side=cfg.sweep.max_side,
    )
    seed_everything(cfg.seed)
    setup = RenderingSetup.from_config(cfg)
    if cfg.mode == "model":
        if cfg.ckpt is None:
            raise ConfigError("mode=model needs ckpt=CHECKPOINT_DIR (or use mode=classical for the optics renderer)")
        pipeline = setup.network()
    elif cfg.mode == "classical":
        pipeline = setup.classical()
    else:
        raise ConfigError(f"mode must be 'model' or 'classical', got {cfg.mode!r}")

    written = render_inputs(pipeline, cfg.input, cfg.output, options, disparity=cfg.disparity, mask=cfg.focus.mask)
    print(f"wrote {len(written)} image(s) to {cfg.output}")


if __name__ == "__main__":
    main()
