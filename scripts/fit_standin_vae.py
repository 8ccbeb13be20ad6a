"""Fit the tiny model's VAE once, long and on many images: the stand-in for SD2.1's pretrained VAE that the smoke
run loads (trainer.base_pretrain.init_from; magicbokeh/training/base_pretrain.py).

python scripts/fit_standin_vae.py experiment=smoke                  # writes data/pretrained/smoke_vae.safetensors
python scripts/fit_standin_vae.py experiment=smoke standin_vae.steps=2000 standin_vae.out=/tmp/vae.safetensors
"""

from __future__ import annotations

from omegaconf import DictConfig

from magicbokeh.utils.cli import hydra_main


@hydra_main("train")
def main(cfg: DictConfig) -> None:
    from magicbokeh.training.base_pretrain import fit_standin_from_config

    fit_standin_from_config(cfg)


if __name__ == "__main__":
    main()
