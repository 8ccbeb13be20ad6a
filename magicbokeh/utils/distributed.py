"""One way to build the ``accelerate.Accelerator`` of every training entry point (trainer and depth distillation)."""

from __future__ import annotations

import torch

from magicbokeh.utils.logging import get_logger

logger = get_logger(__name__)


def build_accelerator(mixed_precision: str = "no", **kwargs):
    """An ``Accelerator`` that also joins a multi-process launch on a machine without an accelerator device.

    accelerate treats ranks started by ``torchrun`` (LOCAL_RANK / WORLD_SIZE set) as one CPU job only when told
    ``cpu=True``; without it each rank would silently train alone. The rank layout is logged so a launch can be
    checked at a glance.
    """
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.accelerator.is_available(), mixed_precision=mixed_precision, **kwargs)
    logger.info(
        "accelerate: %s, process %d of %d on %s",
        accelerator.distributed_type, accelerator.process_index, accelerator.num_processes, accelerator.device,
    )  # fmt: skip
    return accelerator
