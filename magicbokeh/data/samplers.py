"""Deterministic, resumable index streams for training, and task mixing for the joint ablation.

:class:`ResumableRandomSampler` is an infinite stream of dataset indices: epoch e is a fresh permutation seeded from
``(seed, e)``, and element k of the stream depends only on (seed, k). A trainer that consumed ``b`` batches of size
``B`` resumes exactly where it stopped by constructing the sampler with ``start = b · B``: no sampler state needs to be
saved. With ``num_replicas``/``rank`` each process reads every ``num_replicas``-th element of the same global stream,
so the union over ranks equals the single-process stream.

:class:`TaskMixingSampler` answers "which task does step k train?" (``"bokeh"`` or ``"sr"``) in a given ratio,
again as a pure function of (seed, k), and :class:`MixedTaskDataset` mixes tasks inside one batch (every dataset
returns the same dict contract, so samples of both tasks collate together).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import Dataset, Sampler

from magicbokeh.errors import ParameterError
from magicbokeh.utils.seeding import derive_seed, sample_generator


class ResumableRandomSampler(Sampler[int]):
    """Infinite deterministic index stream over ``range(num_samples)``; see the module docstring."""

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        start: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ParameterError(f"num_samples must be ≥ 1, got {num_samples}")
        if start < 0:
            raise ParameterError(f"start must be ≥ 0, got {start}")
        if not 0 <= rank < num_replicas:
            raise ParameterError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.num_samples, self.seed, self.shuffle = int(num_samples), int(seed), bool(shuffle)
        self.start, self.num_replicas, self.rank = int(start), int(num_replicas), int(rank)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        return torch.randperm(self.num_samples, generator=sample_generator(self.seed, epoch, "epoch"))

    def global_index(self, position: int) -> int:
        """Dataset index at ``position`` of the global (all-rank) stream."""
        epoch, offset = divmod(position, self.num_samples)
        return int(self._epoch_order(epoch)[offset])

    def __iter__(self) -> Iterator[int]:
        # This rank's k-th element is global element (start + k)·num_replicas + rank; `start` counts this rank's
        # consumed samples (batches_consumed × per-rank batch size), like the single-process case.
        position = self.start * self.num_replicas + self.rank
        epoch, order = -1, None
        while True:
            current, offset = divmod(position, self.num_samples)
            if current != epoch:
                epoch, order = current, self._epoch_order(current)
            yield int(order[offset])
            position += self.num_replicas


def _normalised_ratios(ratios: Mapping[str, float]) -> tuple[list[str], torch.Tensor]:
    tasks = [str(task) for task in ratios]
    weights = torch.tensor([float(ratios[task]) for task in ratios], dtype=torch.float64)
    if not tasks or (weights < 0).any() or not math.isfinite(float(weights.sum())) or weights.sum() <= 0:
        raise ParameterError(f"task ratios must be non-negative with a positive sum, got {dict(ratios)}")
    return tasks, torch.cumsum(weights / weights.sum(), 0)


class TaskMixingSampler:
    """Infinite stream of task names in a ratio, e.g. ``TaskMixingSampler({"bokeh": 1, "sr": 1}, seed=0)``.

    ``task_at(k)`` is a pure function of (seed, k), so resuming is ``TaskMixingSampler(..., start=k)``.
    """

    def __init__(self, ratios: Mapping[str, float], seed: int, start: int = 0) -> None:
        self.tasks, self._cumulative = _normalised_ratios(ratios)
        self.seed, self.start = int(seed), int(start)

    def task_at(self, step: int) -> str:
        draw = torch.rand((), generator=sample_generator(self.seed, step, "task"), dtype=torch.float64)
        return self.tasks[min(int(torch.searchsorted(self._cumulative, draw.reshape(1))), len(self.tasks) - 1)]

    def __iter__(self) -> Iterator[str]:
        step = self.start
        while True:
            yield self.task_at(step)
            step += 1


class MixedTaskDataset(Dataset):
    """Per-sample task mixing: index i picks a task with ``ratios`` (seeded by (seed, i)), then a sample of it.

    ``datasets`` maps task name → dataset (all returning the common dict contract). The sample index inside the
    chosen dataset is derived from (seed, i) too, so index i is reproducible. ``length`` is the virtual epoch length.
    """

    def __init__(self, datasets: Mapping[str, Dataset], ratios: Mapping[str, float], seed: int, length: int) -> None:
        missing = set(ratios) - set(datasets)
        if missing:
            raise ParameterError(f"ratios name tasks without a dataset: {sorted(missing)}")
        self.datasets = dict(datasets)
        self.mixer = TaskMixingSampler(ratios, seed)
        self.seed, self.length = int(seed), int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        task = self.mixer.task_at(index)
        dataset = self.datasets[task]
        return dataset[derive_seed(self.seed, index, "member") % len(dataset)]
