"""Per-generation checkpoints, so a killed run resumes at its next generation.

Each is written atomically (:mod:`madcore.files`): a reader sees the old file or the new one,
never half. Checkpoints are plain tensors and primitives, loaded with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from madcore.files import atomic_torch_save


class Checkpoints:
    """A folder of ``g<t>.pt`` files, one per finished generation.

    Each holds ``{"generation": t, "samples": S_t as it enters later pools (marked where the
    watermark stage ran), "origin", "marked", "label" (-1 = none), "model": state_dict,
    "row": the generation's results row}``. A file exists only once its generation finished.
    """

    _pattern = re.compile(r"^g(\d{4})\.pt$")

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, t: int) -> Path:
        return self.folder / f"g{t:04d}.pt"

    def finished(self) -> list[int]:
        """Generations with a checkpoint, in order; stops at the first gap."""
        if not self.folder.is_dir():
            return []
        found = sorted(int(m.group(1)) for p in self.folder.iterdir()
                       if (m := self._pattern.match(p.name)))
        done = []
        for expected, t in enumerate(found, start=1):
            if t != expected:
                break
            done.append(t)
        return done

    def save(self, t: int, record: dict[str, Any]) -> None:
        atomic_torch_save(self.path(t), record)

    def load(self, t: int, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return torch.load(self.path(t), map_location=map_location, weights_only=True)
