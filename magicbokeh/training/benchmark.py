"""``python scripts/benchmark.py training``: optimizer steps per second of the tiny smoke network and of the
SD2.1-base-sized network (random weights, the released surgery), one phase at a time, on the same device.

Each step is a real training step of :mod:`magicbokeh.training`: forward, L2 loss, backward, gradient clipping,
AdamW update of the phase's group. LPIPS is left out (its cost does not depend on the MagicBokeh network). The
SD2.1-sized figure is reported as a ratio against the tiny network measured in the same run.
"""

from __future__ import annotations

import time

import torch

from magicbokeh.training.losses import ReconstructionLoss
from magicbokeh.training.optim import build_optimizer
from magicbokeh.utils.cli import ArgumentParser

AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seconds_per_step(
    model: torch.nn.Module,
    phase: str,
    size: int,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    mixed_precision: str = "no",
) -> float:
    """Mean wall time of ``steps`` training steps of ``phase`` after ``warmup`` untimed ones. ``mixed_precision``
    runs forward and loss under autocast (weights and optimizer stay float32, as accelerate's mixed precision)."""
    autocast_dtype = AUTOCAST_DTYPES[mixed_precision]
    generator = torch.Generator().manual_seed(0)
    lq = torch.rand(batch, 3, size, size, generator=generator).to(device)
    target = torch.rand(batch, 3, size, size, generator=generator).to(device)
    defocus = torch.rand(batch, 1, size, size, generator=generator).to(device)
    model.set_phase(phase)
    optimizer = build_optimizer(model.trainable_parameters(phase), lr=1e-5)
    loss_fn = ReconstructionLoss(1.0, 0.0)
    started = 0.0
    for index in range(warmup + steps):
        if index == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss, _ = loss_fn(model(lq, defocus), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(phase), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / steps


def main(argv: list[str]) -> int:
    from hydra.utils import instantiate

    from magicbokeh.models.build import SD21_UNET_CONFIG, SD21_VAE_CONFIG, build_model
    from magicbokeh.utils.config import compose_config

    parser = ArgumentParser(prog="benchmark.py training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", nargs="*", default=["sr_pretrain", "bokeh", "sr"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps of the smoke network per phase")
    parser.add_argument("--sd21-size", type=int, default=256, help="image side for the SD2.1-sized step (0: skip)")
    parser.add_argument("--sd21-steps", type=int, default=1, help="timed steps of the SD2.1-sized network")
    parser.add_argument("--sd21-batch", type=int, default=1, help="batch size of the SD2.1-sized step")
    parser.add_argument("--mixed-precision", choices=sorted(AUTOCAST_DTYPES), default="no")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = compose_config("train", ["experiment=smoke"])
    size, batch = int(cfg.data.crop_size), int(cfg.data.batch_size)
    precision = args.mixed_precision
    print(
        f"training-step benchmark on {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"mixed precision {precision}"
    )

    torch.manual_seed(0)
    tiny = instantiate(cfg.model).to(device)
    tiny_seconds = {}
    for phase in args.phases:
        tiny_seconds[phase] = seconds_per_step(tiny, phase, size, batch, args.steps, 1, device, precision)
        print(f"smoke network  {phase:12s} {size}px batch {batch}: {1 / tiny_seconds[phase]:8.3f} steps/s")
    if args.sd21_size:
        sd21 = build_model(name="sd21-random", unet_config=SD21_UNET_CONFIG, vae_config=SD21_VAE_CONFIG)
        sd21.enable_gradient_checkpointing()
        sd21.to(device)
        # One untimed step first on an accelerator (kernel selection, allocator warm-up); on CPU it costs minutes.
        warmup = 0 if device.type == "cpu" else 1
        for phase in args.phases:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = seconds_per_step(
                sd21, phase, args.sd21_size, args.sd21_batch, args.sd21_steps, warmup, device, precision
            )
            memory = ""
            if device.type == "cuda":
                memory = f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
            print(
                f"SD2.1-sized    {phase:12s} {args.sd21_size}px batch {args.sd21_batch}: {1 / seconds:8.4f} steps/s "
                f"({seconds / tiny_seconds[phase]:.0f}× the smoke step{memory})"
            )
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
