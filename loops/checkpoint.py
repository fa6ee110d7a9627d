"""Atomic files and per-generation checkpoints, so a killed run resumes at its next generation.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
target (``os.replace`` is atomic on POSIX): a reader sees the old file or the new one, never half.
Checkpoints are plain tensors and primitives, loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()   # what open() would give; mkstemp's default 0600 is too private


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


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
