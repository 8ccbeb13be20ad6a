"""Resumable index streams, task mixing, and the seeded joint transforms."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from magicbokeh.data.samplers import MixedTaskDataset, ResumableRandomSampler, TaskMixingSampler
from magicbokeh.data.transforms import center_crop, ensure_min_size, random_crop, random_hflip
from magicbokeh.errors import InvalidInputError, ParameterError


def _take(iterable, n):
    return list(itertools.islice(iterable, n))


def test_each_epoch_is_a_fresh_permutation_and_the_stream_is_deterministic():
    stream = _take(ResumableRandomSampler(10, seed=3), 30)
    epochs = [stream[i : i + 10] for i in (0, 10, 20)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert epochs[0] != epochs[1]
    assert stream == _take(ResumableRandomSampler(10, seed=3), 30)
    assert stream != _take(ResumableRandomSampler(10, seed=4), 30)
    assert _take(ResumableRandomSampler(4, seed=0, shuffle=False), 6) == [0, 1, 2, 3, 0, 1]


def test_resuming_with_start_continues_the_same_stream():
    full = _take(ResumableRandomSampler(7, seed=1), 40)
    batches_consumed, batch_size = 5, 3
    resumed = _take(ResumableRandomSampler(7, seed=1, start=batches_consumed * batch_size), 25)
    assert resumed == full[15:40]


def test_ranks_partition_the_global_stream():
    full = _take(ResumableRandomSampler(9, seed=2), 24)
    ranks = [_take(ResumableRandomSampler(9, seed=2, num_replicas=3, rank=r), 8) for r in range(3)]
    interleaved = [ranks[k % 3][k // 3] for k in range(24)]
    assert interleaved == full
    resumed = _take(ResumableRandomSampler(9, seed=2, start=2, num_replicas=3, rank=1), 6)
    assert resumed == ranks[1][2:8]
    with pytest.raises(ParameterError):
        ResumableRandomSampler(0, seed=0)


def test_task_mixing_follows_the_ratio_and_resumes():
    tasks = _take(TaskMixingSampler({"bokeh": 3, "sr": 1}, seed=0), 4000)
    assert set(tasks) == {"bokeh", "sr"} and abs(Counter(tasks)["bokeh"] / 4000 - 0.75) < 0.03
    assert _take(TaskMixingSampler({"bokeh": 3, "sr": 1}, seed=0, start=100), 50) == tasks[100:150]
    assert set(_take(TaskMixingSampler({"bokeh": 0, "sr": 1}, seed=0), 50)) == {"sr"}
    with pytest.raises(ParameterError):
        TaskMixingSampler({"bokeh": -1, "sr": 1}, seed=0)


class _Named(Dataset):
    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return {"task": self.name, "index": index}


def test_mixed_task_dataset_mixes_reproducibly():
    mixed = MixedTaskDataset({"bokeh": _Named("bokeh", 5), "sr": _Named("sr", 3)}, {"bokeh": 1, "sr": 1}, 0, 200)
    samples = [mixed[i] for i in range(200)]
    assert {s["task"] for s in samples} == {"bokeh", "sr"} and samples == [mixed[i] for i in range(200)]
    assert all(s["index"] < (5 if s["task"] == "bokeh" else 3) for s in samples)
    with pytest.raises(ParameterError):
        MixedTaskDataset({"sr": _Named("sr", 3)}, {"bokeh": 1}, 0, 10)


def test_joint_crop_and_flip_keep_maps_aligned():
    image = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).reshape(2, 3, 6, 8)[0]
    disparity = image[:1].clone()
    generator = torch.Generator().manual_seed(0)
    cropped = random_crop([image, disparity], 4, generator)
    assert cropped[0].shape == (3, 4, 4) and torch.equal(cropped[0][:1], cropped[1])
    flipped = random_hflip(cropped, torch.Generator().manual_seed(1), prob=1.0)
    assert torch.equal(flipped[0], cropped[0].flip(-1)) and torch.equal(flipped[1], cropped[1].flip(-1))
    assert torch.equal(center_crop([image], 2)[0], image[:, 2:4, 3:5])
    with pytest.raises(InvalidInputError):
        random_crop([image, disparity[..., :5]], 4, generator)


def test_ensure_min_size_upscales_small_inputs_only():
    image, mask = torch.rand(3, 10, 20), torch.ones(1, 10, 20)
    grown = ensure_min_size([image, mask], 16, nearest=[False, True])
    assert grown[0].shape == (3, 16, 32) and grown[1].shape == (1, 16, 32) and bool((grown[1] == 1).all())
    assert ensure_min_size([image], 8)[0] is image


def test_sampler_drives_a_dataloader_and_resumes_mid_epoch():
    dataset = _Named("sr", 5)
    loader = DataLoader(dataset, batch_size=2, sampler=ResumableRandomSampler(5, seed=9))
    batches = [batch["index"].tolist() for batch in itertools.islice(loader, 4)]
    resumed = DataLoader(dataset, batch_size=2, sampler=ResumableRandomSampler(5, seed=9, start=2 * 2))
    assert [batch["index"].tolist() for batch in itertools.islice(resumed, 2)] == batches[2:]
