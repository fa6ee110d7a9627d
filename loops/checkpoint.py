"""Per-generation checkpoints, so a killed run resumes at its next generation.

Each is written atomically (:mod:`madcore.files`): a reader sees the old file or the new one,
never half. Checkpoints are plain tensors and primitives, loaded with
``torch.load(weights_only=True)`` only. A file that safe loading refuses (a pickle of anything
else: corrupt, or made to run code when loaded unsafely) or cannot read raises
:class:`CheckpointError`, which names the file and never repeats torch's own message (its advice,
to load the file unsafely, is the attack for a hostile file).
"""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from loops.errors import LoopError
from madcore.files import atomic_torch_save

#: what every generation checkpoint holds (``label`` and ``model`` too, older ones may lack them)
REQUIRED = ("generation", "samples", "origin", "marked", "row")


class CheckpointError(LoopError):
    """A checkpoint that cannot be used: refused by safe loading, unreadable, or not a generation
    checkpoint. ``path``, ``generation`` and ``refused`` (True: safe loading refused it) say which
    and why; callers replace the generic fix with their own (how to recompute it)."""

    def __init__(self, path: Path, generation: int, reason: str, refused: bool = False,
                 fix: str = "restore the file or recompute its generation"):
        super().__init__(f"checkpoint {path} {reason}", fix)
        self.path, self.generation, self.reason, self.refused = path, generation, reason, refused

    def with_fix(self, fix: str) -> "CheckpointError":
        return CheckpointError(self.path, self.generation, self.reason, self.refused, fix)


class Checkpoints:
    """A folder of ``g<t>.pt`` files, one per finished generation.

    Each holds ``{"generation": t, "samples": S_t as it enters later pools (marked where the
    watermark stage ran), "origin", "marked", "label" (-1 = none), "model": state_dict,
    "row": the generation's results row}`` and, when the filter asks for one, "filter_train" (its
    held-out draw, :class:`loops.stages.HeldOutDraw`). A file exists only once its generation
    finished.
    """

    _pattern = re.compile(r"^g(\d{4})\.pt$")

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, t: int) -> Path:
        return self.folder / f"g{t:04d}.pt"

    def on_disk(self) -> list[int]:
        """Every generation with a ``g<t>.pt`` file in the folder, in order (gaps included)."""
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir()
                      if (m := self._pattern.match(p.name)))

    def finished(self) -> list[int]:
        """Generations with a checkpoint, in order; stops at the first gap."""
        done = []
        for expected, t in enumerate(self.on_disk(), start=1):
            if t != expected:
                break
            done.append(t)
        return done

    def save(self, t: int, record: dict[str, Any]) -> None:
        atomic_torch_save(self.path(t), record)

    def load(self, t: int, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Generation t's record, by safe loading only (``weights_only=True``); a file that is
        refused, unreadable or not a generation checkpoint raises :class:`CheckpointError`."""
        path = self.path(t)
        try:
            with warnings.catch_warnings():        # e.g. "Detected pickle protocol 4": noise here
                warnings.simplefilter("ignore")
                record = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            reason, refused = ("was refused by safe loading (torch.load with weights_only=True): "
                               "it holds more than tensors and plain values, so it is corrupt or "
                               "was made to run code when loaded; it was not loaded"), True
        except FileNotFoundError:
            reason, refused = "does not exist", False
        except Exception as error:       # torch raises many types for a damaged file
            reason, refused = f"is unreadable ({type(error).__name__}: not a complete torch " \
                              "checkpoint)", False
        else:
            missing = [k for k in REQUIRED if not isinstance(record, dict) or k not in record]
            if missing:
                why = f"it lacks {', '.join(missing)}"
            elif not isinstance(record["row"], dict):
                why = "its results row is not a row"
            elif record["generation"] != t:
                why = f"it holds generation {record['generation']!r}"
            else:
                return record
            reason, refused = f"is not the checkpoint of generation {t} ({why})", False
        # raised outside the except blocks: torch's error (and its advice) is not chained to it
        raise CheckpointError(path, t, reason, refused)
