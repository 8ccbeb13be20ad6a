"""Endless, resumable batch streams: one per data source (bokeh, SR, mixed), each with its own position.

A stream reads :class:`magicbokeh.data.samplers.ResumableRandomSampler` (a seeded permutation per epoch, forever);
its only state is the number of samples this rank has drawn (the *position*). Saving that integer in the checkpoint
(``state_dict``) and rebuilding the stream at it gives exactly the batches an uninterrupted run would have seen.
Under data parallelism each rank reads its own interleaved share of the same global stream, so ranks never repeat a
sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from magicbokeh.data.samplers import ResumableRandomSampler
from magicbokeh.errors import ConfigError, DatasetError
from magicbokeh.utils.seeding import sample_generator


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (and numbers) key by key; anything else (task names, meta dicts) stays a list."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[key] = values
    return batch


class BatchStream:
    """``next(stream)`` → a collated batch dict; ``stream.position`` = samples this rank has drawn so far."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        *,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        position: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
        if len(dataset) == 0:
            raise DatasetError("a training dataset is empty")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.rank, self.world_size = int(rank), int(world_size)
        self.position = int(position)
        self._iterator: Iterator | None = None

    def _start(self) -> Iterator:
        sampler = ResumableRandomSampler(
            len(self.dataset),
            self.seed,
            shuffle=True,
            start=self.position,
            num_replicas=self.world_size,
            rank=self.rank,
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=BatchSampler(sampler, self.batch_size, drop_last=False),
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            persistent_workers=self.num_workers > 0,
            # Its own generator: creating a loader iterator otherwise draws a worker base seed from the global RNG,
            # which would shift dropout masks depending on when a stream first starts (and break exact resume).
            generator=sample_generator(self.seed, self.position, "loader"),
        )
        return iter(loader)

    def state_dict(self) -> dict[str, int]:
        """The position, as a checkpoint state (plain data)."""
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position: the next batch is the one the saved stream would have drawn next."""
        self.position = int(state["position"])
        self._iterator = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            # Lazily: a stream of a phase that never runs costs nothing (no worker processes).
            self._iterator = self._start()
        batch = next(self._iterator)
        self.position += self.batch_size
        return batch
