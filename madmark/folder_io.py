"""Image folders for the practitioner commands (embed, detect, filter): one policy for every file.

Inputs are only read, through the one reader :func:`madcore.images.read_image` (the loop's
``data=imagefolder`` uses it too, so a file reads the same everywhere).

Every file under the folder (any name, any suffix, any depth) gets one row in the command's
manifest, with a ``status``:

    embedded | decoded   processed: marked by embed, tested by detect and filter (filter's
                         ``decision`` then says keep or flag)
    skipped              an image that was read but that the method cannot mark or read at its
                         shape (1x1 below spread spectrum's minimum, grey or small for DwtDct);
                         ``reason`` names the size, the minimum and the fix
    unreadable           not an image Pillow can decode: empty (0 bytes), truncated, text named
                         .png, permission denied, a dangling symlink, a symlink to a folder, a
                         pipe or device, a folder that cannot be listed, a name that is not UTF-8
                         or holds a line break (it could not be listed faithfully)

and ``notes``: what reading changed or noticed ("16-bit", "alpha kept apart", "EXIF-rotated",
"animated: first of N frames", "CMYK converted to RGB", "symlink"). A symlink to a file is
followed wherever it points (the file is only read). Not read, and counted in the summary
instead of listed: hidden entries (a name starting with ".": .DS_Store, .git/, madcore's
temporary files) and, in a folder written by ``madmark embed``, its own manifest.csv and
watermark.json. A folder with no readable image at all is an error (exit 2, one line).

Stderr gets one line per skipped or unreadable file, at most :data:`MAX_LISTED`, then a count.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional

import torch

from madcore import images
from madcore.errors import MadmarkError

#: the status words of the folder commands' manifests (see the module docstring)
PROCESSED = ("embedded", "decoded")
SKIPPED, UNREADABLE = "skipped", "unreadable"
#: madmark embed's own files at the top of its output folder (not read by detect / filter)
EMBED_FILES = ("manifest.csv", "watermark.json")
#: skipped / unreadable files named on stderr, one line each, before a count of the rest
MAX_LISTED = 20
_CONVERTED = {"CMYK", "YCbCr", "LAB", "HSV"}


@dataclass
class FolderScan:
    """What :func:`scan_folder` found: the files to read and what it left out."""

    root: Path
    files: list[Path] = field(default_factory=list)
    problems: dict[Path, str] = field(default_factory=dict)   # entries unreadable before opening
    hidden: int = 0                                # hidden entries (a folder counts once)
    own: list[str] = field(default_factory=list)   # madmark embed's files, not read

    def not_read(self) -> str:
        """What was left out, for a summary line ("" when nothing was)."""
        parts = [f"{self.hidden} hidden entr{'y' if self.hidden == 1 else 'ies'}"] * bool(
            self.hidden) + [f"madmark embed's {' and '.join(self.own)}"] * bool(self.own)
        return ", ".join(parts)


def embed_record(folder: Path, strict: bool = True) -> Optional[dict]:
    """``folder/watermark.json`` as written by ``madmark embed``, or None if there is none; a
    watermark.json that is not such a record is an error (``strict``) or None."""
    info = folder / "watermark.json"
    if not info.is_file():
        return None
    try:
        record = json.loads(info.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or "key_fingerprint" not in record:
            raise ValueError("no key_fingerprint")
    except (OSError, ValueError) as e:
        if not strict:
            return None
        raise MadmarkError(f"{info} is not the record madmark embed writes ({type(e).__name__})",
                           "move it out of the folder or pass method=, bits= and strength=") from e
    return record


def scan_folder(root: Path) -> FolderScan:
    """Every entry under ``root`` (recursive, not into hidden folders or folder symlinks)."""
    scan = FolderScan(root)

    def walk(folder: Path) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            if folder == root:
                raise MadmarkError(f"cannot list folder {root} ({type(e).__name__})",
                                   "check that it is a folder you can read") from e
            scan.files.append(folder)
            scan.problems[folder] = f"folder cannot be listed ({type(e).__name__}); its files " \
                                    "are not read"
            return
        for entry in entries:
            if entry.name.startswith("."):
                scan.hidden += 1
            elif entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path))
            else:
                scan.files.append(Path(entry.path))

    walk(root)
    if embed_record(root, strict=False) is not None:
        scan.own = [n for n in EMBED_FILES if root / n in scan.files]
        scan.files = [p for p in scan.files if p.parent != root or p.name not in EMBED_FILES]
    scan.files.sort(key=lambda p: relative(p, root))
    return scan


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a manifest writes it (``/``-separated; a name that is not
    UTF-8 shows its bytes as ``\\xNN``)."""
    rel = PurePosixPath(*path.relative_to(root).parts).as_posix()
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class LoadedImage:
    """One file of a folder command: the image as a tensor, or why there is none."""

    path: Path
    image: Optional[torch.Tensor]   # (C, H, W) float32 in [0, 1], C = 1 or 3; None if unreadable
    error: str = ""
    alpha: Optional[torch.Tensor] = None   # (1, H, W) in [0, 1] when the file has transparency
    notes: list[str] = field(default_factory=list)
    mode: str = ""                  # the Pillow mode of the file
    rel: str = ""                   # the path relative to the folder, as the manifest lists it

    def row(self) -> dict:
        """The manifest columns every folder command shares, before the method runs."""
        return {"status": UNREADABLE if self.image is None else "", "reason": self.error,
                "notes": "; ".join(self.notes)}


def _before_opening(path: Path, root: Path) -> str:
    """Why ``path`` cannot be read, when that shows without opening it ("" otherwise)."""
    rel = str(path.relative_to(root))
    if "\n" in rel or "\r" in rel:
        return "file name holds a line break (it could not be listed one per line)"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8 (it could not be listed faithfully)"
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"dangling symlink (to {os.readlink(path)})" if path.is_symlink() else "vanished"
    except OSError as e:
        return f"cannot be opened ({type(e).__name__})"
    if stat.S_ISDIR(info.st_mode):
        return "symlink to a folder (folders behind symlinks are not followed)"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file (a pipe, socket or device)"
    if info.st_size == 0:
        return "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return ""


def _explain(reason: str) -> str:
    """The reader's reason in a user's words."""
    if reason.startswith("UnidentifiedImageError"):
        return "not an image Pillow can decode"
    if reason.startswith("PermissionError"):
        return "permission denied"
    return f"damaged or truncated image ({reason})"


def read_image(path: Path, root: Optional[Path] = None, problem: str = "") -> LoadedImage:
    """One file through :func:`madcore.images.read_image`, as tensors; ``root``: the folder the
    manifest is relative to (notes say when a symlink leads outside it)."""
    root = path.parent if root is None else root
    rel = relative(path, root)
    problem = problem or _before_opening(path, root)
    if problem:
        return LoadedImage(path, None, problem, rel=rel)
    read = images.read_image(path)
    as_tensor = (lambda a: None if a is None else torch.from_numpy(a))
    notes = list(read.notes)
    if read.ok and read.mode in _CONVERTED:
        notes.append(f"{read.mode} converted to RGB")
    if path.is_symlink():
        inside = path.resolve().is_relative_to(root.resolve())
        notes.append("symlink" if inside else "symlink to a file outside the folder")
    return LoadedImage(path, as_tensor(read.image), "" if read.ok else _explain(read.reason),
                       as_tensor(read.alpha), notes, read.mode, rel)


def read_folder(folder: Path, role: str = "folder") -> tuple[list[LoadedImage], FolderScan]:
    """Every file under ``folder`` read (sorted by relative path), with the scan; an error when
    ``folder`` is missing or holds no readable image."""
    if not folder.is_dir():
        raise MadmarkError(f"{role} {folder} does not exist", "pass a folder of images")
    scan = scan_folder(folder)
    items = [read_image(p, folder, scan.problems.get(p, "")) for p in scan.files]
    if not any(it.image is not None for it in items):
        left_out = scan.not_read()
        raise MadmarkError(
            f"no images found under {folder} ({len(items)} file(s), none an image Pillow can "
            f"decode{'; not read: ' + left_out if left_out else ''})",
            "pass a folder with png/jpg images")
    return items, scan


def group_by_shape(images: list[LoadedImage]) -> dict[tuple[int, ...], list[int]]:
    """Indices of the readable images, grouped by (C, H, W) so each group runs as one batch."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(images):
        if item.image is not None:
            groups.setdefault(tuple(item.image.shape), []).append(i)
    return groups


def output_name(rel: str) -> str:
    """madmark embed's output for the input ``rel``: the same relative path with ``.png``
    appended unless it already ends in ``.png`` (``a.png`` -> ``a.png``, ``a.jpg`` ->
    ``a.jpg.png``, ``a.PNG`` -> ``a.PNG.png``), so inputs differing only in their suffix keep
    apart."""
    return rel if rel.endswith(".png") else f"{rel}.png"


def check_output_folder(out: Path, source: Path, role: str = "input folder",
                        option: str = "an output folder") -> None:
    """``out`` must be absent or an empty folder, outside ``source`` (which is only read)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise MadmarkError(f"output folder {out} exists as a file or symlink (nothing is "
                           "overwritten)", f"pass {option} that does not exist yet")
    try:
        filled = out.exists() and any(out.iterdir())
    except OSError as err:
        raise MadmarkError(f"cannot look into output folder {out} ({type(err).__name__})",
                           f"pass {option} you can write") from err
    if filled:
        raise MadmarkError(f"output folder {out} already exists and is not empty (nothing is "
                           "overwritten)", f"pass {option} that is new or empty")
    if out.resolve().is_relative_to(source.resolve()):
        raise MadmarkError(f"output folder {out} lies inside the {role} (which is only read)",
                           f"pass {option} outside the {role}")


@contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that is renamed to ``out`` (absent or empty) once the
    block has written everything into it (madcore.files.atomic_directory); a non-empty ``out`` or
    a failed write is a one-line MadmarkError, and nothing is left behind."""
    from madcore.files import atomic_directory

    try:
        with atomic_directory(out, empty_ok=True) as tmp:
            yield tmp
    except FileExistsError:
        raise MadmarkError(f"output folder {out} already exists and is not empty (nothing is "
                           "overwritten)", "pass out=<new folder>") from None
    except OSError as e:
        raise MadmarkError(f"cannot write output folder {out} ({type(e).__name__}: "
                           f"{e.strerror or e}); nothing was left behind",
                           "check the free space and permissions where it goes") from e


def check_outputs(names: dict[str, str]) -> None:
    """Refuse (before anything is written) outputs that would land on one another: ``names``
    maps each input to its output; also an output that is the folder of another output."""
    seen: dict[str, str] = {}
    for rel, out in names.items():
        if out in seen:
            raise MadmarkError(f"inputs {seen[out]} and {rel} would both be written as {out}",
                               "rename one of them (outputs add .png unless the name ends in .png)")
        seen[out] = rel
    for out, rel in seen.items():
        for parent in PurePosixPath(out).parents:
            if str(parent) in seen:
                raise MadmarkError(f"input {seen[str(parent)]} would be written as {parent}, the "
                                   f"folder of {rel}'s output", "rename one of them")


def report_problems(rows: list[dict], path_key: str, where: str,
                    statuses: tuple[str, ...] = (SKIPPED, UNREADABLE)) -> None:
    """One stderr line per row of one of ``statuses`` (by default skipped or unreadable; at most
    :data:`MAX_LISTED`, then a count)."""
    bad = [r for r in rows if r["status"] in statuses]
    for row in bad[:MAX_LISTED]:
        name = row[path_key].replace("\n", "\\n").replace("\r", "\\r")   # one line each
        print(f"{row['status']} {name}: {row['reason']}", file=sys.stderr)
    if len(bad) > MAX_LISTED:
        rest = Counter(r["status"] for r in bad[MAX_LISTED:])
        print(f"... and {len(bad) - MAX_LISTED} more "
              f"({', '.join(f'{n} {s}' for s, n in sorted(rest.items()))}); every file's reason "
              f"is in {where}", file=sys.stderr)
