"""Train MagicBokeh with the alternating bokeh/SR strategy (configs/train.yaml).

python scripts/train.py experiment=smoke                      # CPU, tiny model, synthetic data, minutes
python scripts/train.py experiment=paper paths.sd21=/path/to/stable-diffusion-2-1-base
accelerate launch scripts/train.py experiment=paper           # many GPUs, one run directory
torchrun --standalone --nproc_per_node 2 scripts/train.py experiment=smoke   # several CPU ranks
python scripts/train.py experiment=paper run_id=paper1 resume=latest        # continue an interrupted run
python scripts/train.py -m experiment=ablation_no_fama,ablation_joint,ablation_no_da_depth,sr_only,bokeh_only
python scripts/train.py -m hydra/launcher=slurm hydra.launcher.partition=gpu experiment=ablation_no_fama,...
"""

from __future__ import annotations

from omegaconf import DictConfig

from magicbokeh.utils.cli import hydra_main


@hydra_main("train")
def main(cfg: DictConfig) -> None:
    from magicbokeh.training.train import train

    train(cfg)


if __name__ == "__main__":
    main()
