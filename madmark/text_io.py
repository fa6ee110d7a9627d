"""Text inputs of the practitioner commands (``madmark detect`` / ``madmark filter`` on text).

A path is text (``modality=text``, or chosen by :func:`choose_modality` under ``modality=auto``):

- a ``.txt`` file (or, under ``modality=text``, a file of any other name): one document;
- a ``.jsonl`` file: one document per line, the string field ``text`` (``text_field=``);
- a folder: every ``.txt`` and ``.jsonl`` file under it, at any depth (as the image commands walk
  a folder: :func:`madmark.folder_io.scan_folder`, hidden entries counted and not read).

``modality=auto`` (the default) takes a ``.txt`` / ``.jsonl`` file as text, and a folder as text
when it holds ``.txt`` / ``.jsonl`` files and no file with an image suffix (one Pillow registers:
.png, .jpg, ...); any other folder is an image folder, read exactly as before (its .txt files
listed "unreadable": not an image). So a folder mixing images and text is tested as images, and
its text by ``modality=text``, which lists the other files as "skipped".

Every file, and every line of a .jsonl, gets one row (:class:`TextDoc`) with a ``status``:

    (scored)     read, tokenized and tested by the command
    empty        a 0-byte file, a text of only whitespace, a .jsonl whose lines are all blank
    unreadable   cannot be read (permission denied, a dangling symlink, a pipe, a name that is
                 not UTF-8 or holds a line break), not UTF-8 text, a binary file (NUL bytes), a
                 .jsonl line that is not JSON or has no string field ``text_field``
    skipped      (folders under modality=text) a file that is not .txt or .jsonl, not read

A .txt is decoded as UTF-8 (a leading BOM dropped; no Latin-1 guess: text of another encoding is
"unreadable", with the fix); line ends ``\\r\\n`` / ``\\r`` become ``\\n`` as for
``data=textfile``. Blank lines of a .jsonl are not documents and get no row. Each row keeps the
bytes it was read from (the file, or the line), so ``madmark filter`` copies exactly those.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from madcore.errors import MadmarkError
from madmark.data.text_corpus import TEXT_SUFFIXES
from madmark.folder_io import (SKIPPED, UNREADABLE, FolderScan, _before_opening, relative,
                               scan_folder)

MODALITIES = ("auto", "image", "text")
EMPTY = "empty"
SCORED = "scored"
_EMPTY_FILE = "empty file (0 bytes)"          # what folder_io._before_opening says of one
_BOM = b"\xef\xbb\xbf"


def image_suffixes() -> set[str]:
    """The file suffixes Pillow registers (lower case, with the dot)."""
    from PIL import Image

    Image.init()
    return {s.lower() for s in Image.registered_extensions()}


def is_text_file(path: Path) -> bool:
    return path.suffix.lower() in TEXT_SUFFIXES


def choose_modality(path: Path, modality: str) -> str:
    """"image" or "text" for the input ``path`` (see the module docstring)."""
    if modality not in MODALITIES:
        raise MadmarkError(f"modality={modality} is not one of {', '.join(MODALITIES)}",
                           "set modality=text for .txt/.jsonl documents, modality=image for images")
    if modality != "auto":
        return modality
    if not path.is_dir():
        return "text" if is_text_file(path) else "image"
    scan = scan_folder(path)
    images = image_suffixes()
    text = any(is_text_file(p) for p in scan.files)
    return "text" if text and not any(p.suffix.lower() in images for p in scan.files) else "image"


@dataclass
class TextDoc:
    """One document (a .txt file or a .jsonl line), or a file that yields none, and why."""

    path: Path                      # the file
    rel: str                        # as the manifest lists it (relative to the input folder)
    line: Optional[int] = None      # the .jsonl line number (1-based)
    text: Optional[str] = None      # the document (None: status says why there is none)
    raw: bytes = b""                # the bytes it was read from: the file, or the line with "\n"
    status: str = ""                # "" (to be scored) | empty | unreadable | skipped
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        """``rel``, or ``rel:line`` for a .jsonl line (the kept / flagged lists' entries)."""
        return self.rel if self.line is None else f"{self.rel}:{self.line}"

    def row(self) -> dict:
        return {"path": self.rel, "line": "" if self.line is None else self.line,
                "status": self.status, "reason": self.reason, "notes": "; ".join(self.notes)}


def _decode(data: bytes) -> tuple[Optional[str], str]:
    """(text, "") or (None, why it is not UTF-8 text)."""
    if b"\0" in data:
        return None, "binary file (holds NUL bytes), not text"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8"
    return text.replace("\r\n", "\n").replace("\r", "\n"), ""


def _read(path: Path) -> tuple[Optional[bytes], str]:
    try:
        with open(path, "rb") as f:
            return f.read(), ""
    except OSError as e:
        return None, "permission denied" if isinstance(e, PermissionError) else \
            f"cannot be read ({type(e).__name__})"


def read_txt(path: Path, rel: str, problem: str = "") -> TextDoc:
    doc = TextDoc(path, rel)
    if path.is_symlink():
        doc.notes.append("symlink")
    if problem:
        doc.status, doc.reason = (EMPTY, problem) if problem == _EMPTY_FILE else (UNREADABLE,
                                                                                problem)
        return doc
    data, why = _read(path)
    if data is None:
        doc.status, doc.reason = UNREADABLE, why
        return doc
    text, why = _decode(data)
    if text is None:
        doc.status, doc.reason = UNREADABLE, why
    elif not text.strip():
        doc.status, doc.reason = EMPTY, "only whitespace"
    else:
        doc.text, doc.raw = text, data
    return doc


def read_jsonl(path: Path, rel: str, text_field: str, problem: str = "") -> list[TextDoc]:
    """One row per non-blank line of ``path``, or one row for the file when it has none."""
    whole = TextDoc(path, rel)
    if problem:
        whole.status, whole.reason = (EMPTY, problem) if problem == _EMPTY_FILE else (
            UNREADABLE, problem)
        return [whole]
    data, why = _read(path)
    if data is None:
        whole.status, whole.reason = UNREADABLE, why
        return [whole]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()                                 # the last line's newline
    docs = []
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        doc = TextDoc(path, rel, number, raw=raw + b"\n")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            doc.status, doc.reason = UNREADABLE, f"line is not UTF-8 ({e.reason} at byte " \
                                                 f"{e.start} of the line)"
            docs.append(doc)
            continue
        if not line.strip():
            continue                                # a blank line is no document
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            doc.status, doc.reason = UNREADABLE, f"not JSON ({e.msg} at column {e.colno})"
            docs.append(doc)
            continue
        value = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            has = (f"fields: {', '.join(list(record)[:5])}" if isinstance(record, dict)
                   else f"a JSON {type(record).__name__}, not an object")
            doc.status, doc.reason = UNREADABLE, f"no string field '{text_field}' ({has}); " \
                                                 "set text_field=<the field holding the text>"
        elif not value.strip():
            doc.status, doc.reason = EMPTY, f"field '{text_field}' holds no text"
        else:
            doc.text = value.replace("\r\n", "\n")
        docs.append(doc)
    if not docs:
        whole.status, whole.reason = EMPTY, "no JSON lines (only blank lines)"
        return [whole]
    return docs


def check_exists(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        raise MadmarkError(f"{path} does not exist",
                           "pass a folder of .txt files, a .txt file or a .jsonl file")


def read_text_inputs(path: Path, text_field: str = "text") -> tuple[list[TextDoc], FolderScan]:
    """Every document of the text input ``path`` (a .txt, a .jsonl or a folder), in path order
    (a .jsonl's lines in order); an error when ``path`` is missing or holds no document."""
    check_exists(path)
    if not path.is_dir():
        scan = FolderScan(path.parent, [path])
        problem = _before_opening(path, path.parent)
        rel = path.name
        docs = (read_jsonl(path, rel, text_field, problem) if path.suffix.lower() == ".jsonl"
                else [read_txt(path, rel, problem)])
    else:
        scan = scan_folder(path)
        docs = []
        for p in scan.files:
            rel = relative(p, path)
            problem = scan.problems.get(p, "") or _before_opening(p, path)
            if not is_text_file(p) and not problem:
                docs.append(TextDoc(p, rel, status=SKIPPED, reason="not a .txt or .jsonl file "
                                    "(not read as text; images: modality=image)"))
            elif p.suffix.lower() == ".jsonl":
                docs += read_jsonl(p, rel, text_field, problem)
            else:
                docs.append(read_txt(p, rel, problem))
    if not any(d.text is not None for d in docs):
        counts = {s: sum(d.status == s for d in docs) for s in (EMPTY, UNREADABLE, SKIPPED)}
        found = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no files"
        left_out = scan.not_read()
        raise MadmarkError(f"no text documents found in {path} ({found}"
                           f"{'; not read: ' + left_out if left_out else ''})",
                           "pass .txt files (one document each) or a .jsonl with a "
                           f"'{text_field}' field (text_field=<field>)")
    return docs, scan


def write_split(tmp: Path, docs: list[TextDoc], decisions: list[str], single_jsonl: bool,
                write_bytes) -> dict[str, int]:
    """The kept and flagged documents into ``tmp`` (madmark filter's output folder under its
    temporary name): ``kept/`` and ``flagged/`` trees of the .txt files (their bytes as read) and
    of each .jsonl's kept / flagged lines (byte for byte), or, for a single .jsonl input,
    ``kept.jsonl`` and ``flagged.jsonl``. ``write_bytes(path, data)`` writes one file.
    Returns the number of files written per decision."""
    parts: dict[tuple[str, str], list[bytes]] = {}
    for doc, decision in zip(docs, decisions):
        if decision not in ("keep", "flag"):
            continue
        folder = "kept" if decision == "keep" else "flagged"
        name = f"{folder}.jsonl" if single_jsonl else os.path.join(folder, doc.rel)
        parts.setdefault((decision, name), []).append(doc.raw)
    if single_jsonl:
        for decision, name in (("keep", "kept.jsonl"), ("flag", "flagged.jsonl")):
            parts.setdefault((decision, name), [])
    else:
        for folder in ("kept", "flagged"):
            (tmp / folder).mkdir(exist_ok=True)
    for (_, name), chunks in parts.items():
        write_bytes(tmp / name, b"".join(chunks))
    return {d: sum(k[0] == d for k in parts) for d in ("keep", "flag")}
