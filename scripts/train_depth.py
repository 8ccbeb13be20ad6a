"""Distil the degradation-aware depth student (configs/depth.yaml; magicbokeh.training.depth_distill.train_depth).

python scripts/train_depth.py experiment=depth_smoke                       # CPU, tiny network, minutes
python scripts/train_depth.py experiment=depth_paper data.train.root=/data/sa1b_200k \
    paths.depth_anything=/weights/depth_anything_v2_vitl.pth
accelerate launch scripts/train_depth.py experiment=depth_paper ...   # many GPUs, one run directory
python scripts/train_depth.py experiment=depth_smoke run_id=<id> resume=latest   # continue a run
"""

from __future__ import annotations

from omegaconf import DictConfig

from magicbokeh.utils.cli import hydra_main


@hydra_main("depth")
def main(cfg: DictConfig) -> None:
    from magicbokeh.training.depth_distill import train_depth

    train_depth(cfg)


if __name__ == "__main__":
    main()
