"""Devices named by the user: whether one exists here, the ``--device`` of benchmark scripts (parsed once,
checked) and synchronisation around timed regions."""

from __future__ import annotations

import torch

from magicbokeh.errors import ParameterError


def why_unavailable(device: torch.device) -> str | None:
    """Why ``device`` cannot be used on this machine, or None when it can: torch accepts ``cuda:7`` as a name on a
    machine without CUDA and fails only at the first tensor moved there, far from the setting that caused it."""
    if device.type == "cpu":
        return None
    accelerator = torch.accelerator.current_accelerator(check_available=True)  # cuda, xpu, mps …, or None
    if accelerator is None or accelerator.type != device.type:
        return f"no {device.type.upper()} device is visible to torch {torch.__version__}"
    if device.index is not None and device.index >= (count := torch.accelerator.device_count()):
        return f"only {count} {device.type.upper()} device(s) here"
    return None


def parse_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1``, … → a device that exists here (:class:`ParameterError` otherwise)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ParameterError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from error
    if (reason := why_unavailable(device)) is not None:
        raise ParameterError(f"--device {name}: {reason}")
    if device.type not in ("cpu", "cuda"):
        raise ParameterError(f"--device {name}: only cpu and cuda devices are supported by the benchmarks")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a wall-clock timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
