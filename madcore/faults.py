"""A test-only fault hook: SIGKILL this process at a named point, deterministically.

    MADMARK_KILL_AT=after-checkpoint@6 madmark run ...    # killed right after checkpoint 6
    MADMARK_KILL_AT=before-rename:report.md@7 ...         # the 7th report.md write, mid-write

``kill_point(name)`` marks a point; ``MADMARK_KILL_AT=<name>[@<n>]`` kills the process with
SIGKILL (no cleanup, no ``finally``: what a power cut or the OOM killer does) the n-th time
(default: the first) this process reaches that point. Points: ``after-checkpoint`` (a generation's
checkpoint is on disk, nothing else of it is written yet) and ``before-rename:<file name>``
(an atomic write's temporary file is complete, the rename has not happened). Unset — always,
outside the resume tests — a point costs one environment lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "MADMARK_KILL_AT"
_hits: Counter = Counter()


def kill_point(name: str) -> None:
    """SIGKILL this process here if ``MADMARK_KILL_AT`` names this point (and its hit count)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.rpartition("@") if "@" in spec else (spec, "", "1")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
