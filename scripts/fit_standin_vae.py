"""Fit the tiny model's VAE once, long and on many images: the stand-in for SD2.1's pretrained VAE that the smoke
run loads (trainer.base_pretrain.init_from; magicbokeh/training/base_pretrain.py).

python scripts/fit_standin_vae.py experiment=smoke                  # writes data/pretrained/smoke_vae.safetensors
python scripts/fit_standin_vae.py experiment=smoke standin_vae.steps=2000 standin_vae.out=/tmp/vae.safetensors \
    standin_vae.results_name=null

The file's metadata records this command, the seed, the settings, the degradation, the code commit and library
versions, and the held-out scores every ``standin_vae.eval_every`` steps; the scores also go to
``results/<standin_vae.results_name>.json`` (``standin_vae``). Run it from a committed tree, so that the recorded
commit is the code that fitted the file.
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
