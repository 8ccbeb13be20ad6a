"""``python scripts/benchmark.py training``: optimizer steps per second and peak memory of the tiny smoke network
and of the SD2.1-base-sized network (random weights, the released surgery), one phase at a time, on one device.

Each step is a real training step of :mod:`magicbokeh.training`: forward, L2 loss, backward, gradient clipping,
AdamW update of the phase's group (under ``--mixed-precision fp16`` with a ``GradScaler``, unscaled before the
clip, as in training). LPIPS is left out (its cost does not depend on the MagicBokeh network). The SD2.1-sized
network uses gradient checkpointing, as ``configs/model/sd21.yaml`` does, and its step time is also given as a ratio
against the smoke network's step measured in the same run. Peak memory: on CUDA the allocator's peak
(``max_memory_allocated``: weights, optimizer state and activations); on the CPU the process's peak resident set
(``VmHWM``, reset before each phase), which also counts everything the process holds. Every figure is written to
``results/<--results>.json`` (:func:`magicbokeh.utils.results.write_results`).

    python scripts/benchmark.py training                                          # CPU: smoke network, 256² SD2.1
    python scripts/benchmark.py training --device cuda --sd21-size 512 --mixed-precision bf16 --sd21-steps 3
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import torch

from magicbokeh.errors import ParameterError
from magicbokeh.training.losses import ReconstructionLoss
from magicbokeh.training.optim import build_optimizer
from magicbokeh.utils.cli import ArgumentParser
from magicbokeh.utils.devices import parse_device, synchronize

AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so the new peak is this phase's own
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current resident set
    except OSError:
        pass


def _peak_memory_gib(device: torch.device) -> float | None:
    """Peak since :func:`_reset_peak_memory`: allocator peak on CUDA, peak resident set on the CPU (None: unknown)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


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
    parameters = model.trainable_parameters(phase)
    optimizer = build_optimizer(parameters, lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision == "fp16")
    loss_fn = ReconstructionLoss(1.0, 0.0)
    started = 0.0
    for index in range(warmup + steps):
        if index == warmup:
            synchronize(device)
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss, _ = loss_fn(model(lq, defocus), target)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    return (time.perf_counter() - started) / steps


def _measure_phase(model, phase, size, batch, steps, warmup, device, precision) -> dict:
    _reset_peak_memory(device)
    seconds = seconds_per_step(model, phase, size, batch, steps, warmup, device, precision)
    return {
        "phase": phase,
        "size": size,
        "batch": batch,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "seconds_per_step": seconds,
        "steps_per_second": 1.0 / seconds,
        "peak_memory_gib": _peak_memory_gib(device),
    }


def _memory_text(row: dict, device: torch.device) -> str:
    if row["peak_memory_gib"] is None:
        return ""
    kind = "peak GPU memory" if device.type == "cuda" else "peak process RSS"
    return f", {kind} {row['peak_memory_gib']:.2f} GiB"


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
    parser.add_argument("--attention-backend", default=None, help="FAMA backend (default: the model config's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--results", default="training", help="results file name under results/ ('none': write none)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.sd21_steps < 1:
        raise ParameterError("--steps and --sd21-steps must be ≥ 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = parse_device(args.device)
    backend_override = [] if args.attention_backend is None else [f"model.fama.backend={args.attention_backend}"]
    cfg = compose_config("train", ["experiment=smoke", *backend_override])
    size, batch = int(cfg.data.crop_size), int(cfg.data.batch_size)
    precision = args.mixed_precision
    print(
        f"training-step benchmark on {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"mixed precision {precision}, FAMA backend {cfg.model.fama.backend}"
    )

    torch.manual_seed(0)
    tiny = instantiate(cfg.model).to(device)
    rows = []
    tiny_seconds = {}
    for phase in args.phases:
        row = _measure_phase(tiny, phase, size, batch, args.steps, 1, device, precision)
        row["network"] = "smoke"
        rows.append(row)
        tiny_seconds[phase] = row["seconds_per_step"]
        print(f"smoke network  {phase:12s} {size}px batch {batch}: {row['steps_per_second']:8.3f} steps/s")
    if args.sd21_size:
        start = time.perf_counter()
        sd21 = build_model(
            name="sd21-random",
            unet_config=SD21_UNET_CONFIG,
            vae_config=SD21_VAE_CONFIG,
            fama={"backend": cfg.model.fama.backend},
        )
        sd21.enable_gradient_checkpointing()
        sd21.to(device)
        print(f"SD2.1-sized network built in {time.perf_counter() - start:.1f} s")
        # One untimed step first on an accelerator (kernel selection, allocator warm-up); on CPU it costs minutes.
        warmup = 0 if device.type == "cpu" else 1
        for phase in args.phases:
            row = _measure_phase(
                sd21, phase, args.sd21_size, args.sd21_batch, args.sd21_steps, warmup, device, precision
            )
            row["network"] = "sd21"
            row["vs_smoke_step"] = row["seconds_per_step"] / tiny_seconds[phase]
            rows.append(row)
            print(
                f"SD2.1-sized    {phase:12s} {args.sd21_size}px batch {args.sd21_batch}: "
                f"{row['steps_per_second']:8.4f} steps/s ({row['vs_smoke_step']:.0f}× the smoke step"
                f"{_memory_text(row, device)})"
            )
    if args.results.strip().lower() not in ("", "none"):
        path = _write_results(args.results, rows, device, precision, cfg.model.fama.backend)
        print(f"results: {path}")
    return 0


def _write_results(name: str, rows: list[dict], device: torch.device, precision: str, backend: str) -> Path:
    from magicbokeh.utils.results import Table, write_results

    memory = "peak GPU memory (GiB)" if device.type == "cuda" else "peak process RSS (GiB)"
    table = Table(
        ["network", "phase", "size (px)", "batch", "steps/s", memory],
        [
            [row["network"], row["phase"], row["size"], row["batch"], row["steps_per_second"], row["peak_memory_gib"]]
            for row in rows
        ],
        ["", "", "d", "d", ".3f", ".2f"],
    )
    figures = {"device": str(device), "mixed_precision": precision, "attention_backend": backend, "rows": rows}
    title = f"Training steps per second and peak memory per phase ({device}, mixed precision {precision})"
    return write_results(name, figures, title=title, tables={"steps": table}, seed=0)


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
