"""One way to start the processes' shared state and build the ``accelerate.Accelerator`` of every training entry
point (trainer and depth distillation)."""

from __future__ import annotations

import torch

from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)


def _cpu_only() -> bool:
    """accelerate treats ranks started by ``torchrun`` (LOCAL_RANK / WORLD_SIZE set) as one CPU job only when told
    ``cpu=True``; without it each rank would silently train alone on a machine without an accelerator device."""
    return not torch.accelerator.is_available()


def _export_submitit_ranks() -> None:
    """Inside a Slurm job started by Hydra's submitit launcher (``hydra/launcher=slurm``) with several tasks, each
    task is one rank: export torch.distributed's variables (RANK, WORLD_SIZE, MASTER_ADDR, …) from Slurm's, as
    ``torchrun`` would, so accelerate joins them into one job. Every task keeps all GPUs visible and accelerate
    picks ``LOCAL_RANK``'s."""
    import os

    if not os.environ.get("SUBMITIT_EXECUTOR") or "RANK" in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def distributed_state():
    """accelerate's ``PartialState`` (the process group, rank, device) before any ``Accelerator`` exists: what an
    entry point needs to agree on things across ranks (the run directory) before building its accelerator."""
    from accelerate import PartialState

    _export_submitit_ranks()
    return PartialState(cpu=_cpu_only())


def build_accelerator(mixed_precision: str = "no", **kwargs):
    """An ``Accelerator`` that also joins a multi-process launch on a machine without an accelerator device.

    The rank layout is logged so a launch can be checked at a glance.
    """
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=_cpu_only(), mixed_precision=mixed_precision, **kwargs)
    if accelerator.mixed_precision == "fp16" and not accelerator.native_amp:
        from magicbokeh.errors import ConfigError

        # accelerate would silently train in float32 (no autocast, no loss scaling) on a CPU.
        raise ConfigError(f"mixed_precision=fp16 needs a GPU ({accelerator.device} here); use bf16 or no")
    logger.info(
        "accelerate: %s, process %d of %d on %s",
        accelerator.distributed_type, accelerator.process_index, accelerator.num_processes, accelerator.device,
    )  # fmt: skip
    return accelerator
