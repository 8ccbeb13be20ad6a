"""Seeding: one global seed for a run, and reproducible per-sample generators.

Library code never touches the global RNGs; functions that sample take a ``torch.Generator``. Datasets derive one
generator per sample from ``(base_seed, index)`` so any sample can be regenerated alone, in any worker, in any order.
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch

_MASK_63 = (1 << 63) - 1


def derive_seed(base_seed: int, *keys: int | str) -> int:
    """Mix a base seed with any number of keys (indices, names) into a 63-bit seed.

    A hash (not ``base_seed + index``) so that neighbouring base seeds do not produce shifted copies of the same
    sample stream.
    """
    digest = hashlib.blake2b(repr((int(base_seed), *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK_63


def sample_generator(
    base_seed: int, index: int, *extra: int | str, device: torch.device | str = "cpu"
) -> torch.Generator:
    """Return a ``torch.Generator`` seeded from ``(base_seed, index, *extra)``; same arguments, same stream."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(base_seed, index, *extra))
    return generator


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global RNGs (entry points only; for third-party code that uses them)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))  # noqa: NPY002 (seeding the legacy global RNG is the point here)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
