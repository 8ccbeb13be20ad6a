"""The ``--device`` of benchmark scripts: parsed once, checked, and synchronised around timed regions."""

from __future__ import annotations

import torch

from magicbokeh.errors import ParameterError


def parse_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:1``, … → a device that exists here (:class:`ParameterError` otherwise)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise ParameterError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(f"--device {name}: no CUDA device is visible to torch {torch.__version__}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ParameterError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise ParameterError(f"--device {name}: only cpu and cuda devices are supported by the benchmarks")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a wall-clock timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
