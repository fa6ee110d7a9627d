"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of it.

Every write goes to a temporary name in the target's folder, is flushed to disk (fsync), then
renamed over the target (``os.replace`` is atomic on POSIX). Temporary names start with ``.`` and
end with ``.tmp`` (:func:`is_temporary`), so a folder scan can skip, and a resume can remove,
what a killed writer left behind.

    atomic_write_text(path, text)              # also _bytes, _json, torch_save
    atomic_write_with(path, lambda tmp: save_file(state, tmp))   # a library that takes a path
    with atomic_directory(final) as tmp:       # fill tmp/; it replaces `final` on success
        ...
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from madcore.faults import kill_point


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()   # what open() would give; mkstemp's default 0600 is too private


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def is_temporary(path: str | Path) -> bool:
    """True for the names this module writes to before renaming (``.<name>.<...>.tmp``)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename); folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        kill_point(f"before-rename:{path.name}")       # tests only (madcore.faults)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """UTF-8 ``text`` to ``path``, atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """``obj`` as JSON (plus a newline) to ``path``, atomically; non-JSON values via ``str``."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path``, atomically (load it back with ``weights_only=True``)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> None:
    """Atomically create ``path`` with ``write(tmp_path)``, for writers that take a path
    (safetensors' ``save_file``, ``yaml`` dumps through a file, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(final: str | Path, replace: bool = False,
                     empty_ok: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block succeeds its files are
    fsynced and the folder is renamed to ``final``. On an exception it is removed and ``final``
    is untouched. ``final`` must not exist unless ``replace=True`` (then the old folder is
    removed just before the rename: the one moment a reader can find neither) or ``empty_ok=True``
    and it is an empty folder (the rename takes its place; should something have been put in it
    meanwhile, the rename fails with an OSError and nothing of it is removed)."""
    final = Path(final)
    if final.exists() and not replace and not (
            empty_ok and final.is_dir() and not final.is_symlink() and not any(final.iterdir())):
        raise FileExistsError(f"{final} exists")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(final)
    tmp.mkdir()
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file() and not p.is_symlink():
                _fsync(p)
        if replace and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
