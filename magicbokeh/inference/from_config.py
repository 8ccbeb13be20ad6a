"""The pipelines a front end renders with, built from its config: ``scripts/render.py`` (configs/render.yaml) and
``scripts/demo.py`` (configs/demo.yaml) share the keys ``device``, ``preset``, ``depth_model.*``, ``saliency``,
``ckpt``, ``sd21``, ``tile.*``, ``color_fix``, ``precision``, ``merge_lora`` and ``renderer``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from magicbokeh.depth.focus import SaliencyModel, load_saliency_model
from magicbokeh.errors import ConfigError
from magicbokeh.inference.batch import LazyDepthModel
from magicbokeh.inference.classical import ClassicalPipeline
from magicbokeh.inference.pipeline import MagicBokehPipeline
from magicbokeh.inference.presets import get_preset
from magicbokeh.utils.devices import why_unavailable


def config_device(name: str) -> torch.device:
    """``auto``: the accelerator torch sees here (a GPU), else the CPU; any other name as torch reads it, if this
    machine has that device (ConfigError otherwise)."""
    if name == "auto":
        return torch.accelerator.current_accelerator(check_available=True) or torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"device must be auto or a torch device (cpu, cuda, cuda:1 …), got {name!r}") from error
    if (reason := why_unavailable(device)) is not None:
        raise ConfigError(f"device={name}: {reason} (device=auto takes the accelerator if there is one, else the CPU)")
    return device


@dataclass
class RenderingSetup:
    """The device, the (lazily built) depth model and the optional saliency model the pipelines share."""

    cfg: DictConfig
    device: torch.device
    depth_model: LazyDepthModel
    saliency_model: SaliencyModel | None

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RenderingSetup:
        preset = get_preset(cfg.preset)
        device = config_device(str(cfg.device))

        def build() -> object:  # on first use: a run whose images all come with disparity maps needs no weights
            from magicbokeh.depth import build_depth_model  # transformers, only when a depth model is needed

            return build_depth_model(
                cfg.depth_model.size,
                cfg.depth_model.weights,
                input_size=cfg.depth_model.input_size,
                preprocessing=preset.depth_preprocessing,
                config_key="depth_model.weights",
                device=device,
            )

        depth_model = LazyDepthModel(build)
        saliency_model = load_saliency_model(cfg.saliency, config_key="saliency", device=device)
        return cls(cfg, device, depth_model, saliency_model)

    def network(self) -> MagicBokehPipeline:
        """The network's pipeline on the checkpoint ``ckpt`` (ConfigError when there is none)."""
        from magicbokeh.models import MagicBokehModel

        cfg = self.cfg
        if cfg.ckpt is None:
            raise ConfigError("this needs ckpt=CHECKPOINT_DIR (a trained or imported MagicBokeh model)")
        return MagicBokehPipeline(
            MagicBokehModel.from_pretrained(cfg.ckpt, sd21_path=cfg.sd21),
            self.depth_model,
            preset=get_preset(cfg.preset).name,
            tile_size=cfg.tile.size,
            tile_stride=cfg.tile.stride,
            tile_batch_size=cfg.tile.batch,
            color_fix=cfg.color_fix,
            device=self.device,
            precision=cfg.precision,
            merge_lora=cfg.merge_lora,
            saliency_model=self.saliency_model,
        )

    def classical(self) -> ClassicalPipeline:
        """The classical renderer (``renderer``) behind the same focus and depth handling."""
        from hydra.utils import instantiate

        return ClassicalPipeline(
            instantiate(self.cfg.renderer),
            device=self.device,
            depth_model=self.depth_model,
            saliency_model=self.saliency_model,
        )
