"""Random streams derived from (seed, generation, purpose).

Each generation re-derives its generators from the run seed instead of continuing one global
stream, so a run resumed at generation t draws exactly what an uninterrupted run would have.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch


def derive_seed(seed: int, generation: int, purpose: str) -> int:
    """A 63-bit seed for one (generation, purpose) stream, e.g. ``purpose="fit"``."""
    entropy = [int(seed), int(generation), zlib.crc32(purpose.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def generator(seed: int, generation: int, purpose: str,
              device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded by :func:`derive_seed`."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, generation, purpose))
