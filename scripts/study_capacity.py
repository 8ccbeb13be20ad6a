"""×2 vs ×4 on the smoke's 32 px crops: does a small CNN trained only for super-resolution beat its own input?

python scripts/study_capacity.py                        # writes results/study_capacity.json
python scripts/study_capacity.py --scales 2 --steps 200 --results none

For each Real-ESRGAN scale, a residual CNN (``--convs`` 3×3 convolutions of ``--channels`` channels with ReLU between
them; the last one zero-initialised, so training starts from output = input) is trained with Adam and an L2 loss
on the smoke's SR stream (``data.sr_train`` of ``experiment=smoke``: crops of ``data/samples/photos`` degraded at
that scale, the stream the smoke's SR phases read), then scored on the smoke's validation and test SR sets degraded
the same way. The "upsampled input" column is the degraded input itself, the score every SR model has to beat. The
CNN has none of MagicBokeh's constraints (no VAE round trip, no latent grid), so it asks of the inputs alone whether
they keep enough to restore at that scale.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
from hydra.utils import instantiate
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from magicbokeh.data.transforms import resize_images
from magicbokeh.evaluation.metrics import psnr
from magicbokeh.training.data_streams import BatchStream, collate_samples
from magicbokeh.utils.cli import exit_on_user_error, set_offline_defaults
from magicbokeh.utils.config import compose_config
from magicbokeh.utils.results import Table, add_results_option, chosen_results_name, write_results
from magicbokeh.utils.seeding import seed_everything


class ResidualCNN(nn.Module):
    """``images + f(images)``, ``f`` a stack of 3×3 convolutions whose last layer starts at zero (identity start)."""

    def __init__(self, convs: int, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        widths = [3, *[channels] * (convs - 1), 3]
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Conv2d(width_in, width_out, 3, padding=1))
            if index < convs - 1:
                layers.append(nn.ReLU())
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.body = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images + self.body(images)


@torch.no_grad()
def mean_psnr(model: nn.Module | None, dataset, device: torch.device, batch_size: int = 16) -> float:
    """Mean PSNR (dB) over ``dataset`` of the model's output, or of the upsampled input when ``model`` is None."""
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_samples):
        target = batch["target"].to(device)
        images = resize_images(batch["lq"].to(device), target.shape[-2:])
        if model is not None:
            images = model(images).clamp(0, 1)
        total += psnr(images, target).sum().item()
        count += target.shape[0]
    return total / count


def run_scale(args: argparse.Namespace, scale: int, device: torch.device) -> dict:
    """Train one CNN at ``scale`` and score it and the input on the validation and test SR sets."""
    cfg = compose_config("train", ["experiment=smoke", *args.override, f"degradation.scale={scale}"])
    seed_everything(args.seed)  # the CNN's initial weights
    model = ResidualCNN(args.convs, args.channels).to(device)
    stream = BatchStream(instantiate(cfg.data.sr_train), args.batch_size, seed=int(cfg.seed))
    sets = {"validation": instantiate(cfg.data.val_sr), "test": instantiate(cfg.data.test_sr)}
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    curve = []
    progress = tqdm(range(1, args.steps + 1), desc=f"small CNN at ×{scale}", dynamic_ncols=True)
    for step in progress:
        batch = next(stream)
        target = batch["target"].to(device)
        output = model(resize_images(batch["lq"].to(device), target.shape[-2:]))
        loss = torch.nn.functional.mse_loss(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            validation = mean_psnr(model, sets["validation"], device)
            curve.append({"step": step, "loss": loss.item(), "validation_psnr": validation})
            model.train()
    model.eval()
    scores = {}
    for name, dataset in sets.items():
        scores[name] = {"size": len(dataset), "input": mean_psnr(None, dataset, device)}
        scores[name]["cnn"] = mean_psnr(model, dataset, device)
    return {"scale": scale, "scores": scores, "curve": curve}


@exit_on_user_error
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="study_capacity.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 4], help="Real-ESRGAN scales to compare")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--convs", type=int, default=4, help="3×3 convolutions in the residual branch")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=250, help="validation PSNR curve interval (steps)")
    parser.add_argument("--seed", type=int, default=0, help="the CNN's initial weights (the data follow the smoke)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override of the smoke config the data come from (repeatable)",
    )
    add_results_option(parser, "study_capacity")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1 or args.convs < 2 or args.channels < 1:
        parser.error("need --steps ≥ 1, --eval-every ≥ 1, --convs ≥ 2 and --channels ≥ 1")
    set_offline_defaults()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    started = time.perf_counter()
    runs = [run_scale(args, scale, device) for scale in args.scales]
    rows = []
    for run in runs:
        for name, score in run["scores"].items():
            rows.append(
                [f"×{run['scale']}", name, score["size"], score["input"], score["cnn"], score["cnn"] - score["input"]]
            )
    table = Table(
        ["scale", "set", "crops", "upsampled input", "small CNN", "CNN − input"],
        rows,
        ["", "", "d", ".2f", ".2f", "+.2f"],
    )
    print("\nSR PSNR (dB) of a small CNN trained for the task, on the smoke's 32 px crops:\n" + table.markdown())
    name = chosen_results_name(args.results)
    if name:
        settings = {key: value for key, value in vars(args).items() if key != "results"}
        path = write_results(
            name,
            {"settings": settings, "runs": runs, "seconds": time.perf_counter() - started},
            title="small residual CNN trained directly for SR on the smoke's 32 px crops, per Real-ESRGAN scale",
            tables={"psnr": table},
            seed=args.seed,
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
