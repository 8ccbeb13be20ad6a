"""A device the user names is checked against what this machine has (utils/devices.why_unavailable)."""

from __future__ import annotations

import pytest
import torch

from magicbokeh.errors import ParameterError
from magicbokeh.utils.devices import parse_device, why_unavailable


@pytest.fixture
def two_cuda_devices(monkeypatch):
    """This machine as torch would see one with two CUDA GPUs (nothing is moved to them)."""
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 2)


def test_the_cpu_is_always_there():
    assert why_unavailable(torch.device("cpu")) is None


def test_an_accelerator_of_another_kind_is_not_there(two_cuda_devices):
    assert why_unavailable(torch.device("mps")).startswith("no MPS device is visible")


def test_an_index_past_the_last_device_says_how_many_there_are(two_cuda_devices):
    assert why_unavailable(torch.device("cuda")) is None
    assert why_unavailable(torch.device("cuda:1")) is None
    assert why_unavailable(torch.device("cuda:2")) == "only 2 CUDA device(s) here"
    with pytest.raises(ParameterError, match=r"--device cuda:2: only 2 CUDA device\(s\) here"):
        parse_device("cuda:2")


def test_without_an_accelerator_no_accelerator_device_is_there(monkeypatch):
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: None)
    assert why_unavailable(torch.device("cuda:0")).startswith("no CUDA device is visible to torch")
