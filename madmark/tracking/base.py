"""What every experiment logger (``configs/logger/<name>.yaml``) offers, and how a results row and
a config are cut into what loggers take.

A logger's config is a dataclass built by Hydra from the group's ``_target_``; its ``check()``
raises :class:`~madcore.errors.MadmarkError` when the backend's package is missing (cheap: no
import), and ``open(run_dir, experiment, record)`` starts or continues the log of one run
(``record``: the run's ``tracking.json``, empty for a new run).
"""
from __future__ import annotations

import importlib.util
import math
import numbers
from pathlib import Path
from typing import Any, Protocol

from madcore.errors import MadmarkError

#: the pip extra that installs every logger's package
EXTRA = "pip install 'madmark[tracking]'"


class Logger(Protocol):
    """One run's log in a tracking backend. ``state`` is what a resumed run needs to continue the
    same log (merged into ``tracking.json``)."""

    state: dict[str, Any]

    def log_config(self, config: dict[str, Any]) -> None:
        """The resolved config of the run (once, when the run starts)."""

    def log_row(self, t: int, row: dict[str, Any]) -> None:
        """Generation t's results.csv row: numeric columns as scalars at step t, the others as
        text or tags."""

    def log_image(self, tag: str, png_path: Path, t: int) -> None:
        """A PNG of the run directory (a sample grid, a plot) under ``tag`` at step t."""

    def flush(self) -> None:
        """Make everything logged so far durable (before ``tracking.json`` says it is logged)."""

    def close(self, failed: bool = False) -> None:
        """End the log; ``failed``: the run stopped with an error (it may be resumed)."""


class LoggerConfig(Protocol):
    def check(self) -> None: ...

    def open(self, run_dir: Path, experiment: str, record: dict[str, Any]) -> Logger: ...


def require(logger: str, packages: tuple[str, ...]) -> None:
    """MadmarkError naming the first of ``packages`` that is not installed (found without
    importing it)."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise MadmarkError(f"logger={logger} needs the {missing[0]} package, which is not "
                           "installed", f"{EXTRA} (or set logger=none)")


def split_row(row: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """``(numbers, texts)`` of a row: finite int/float values as floats (NaN and inf, "undefined",
    are left out; booleans count as text, as results.csv writes ``True``), every other value but
    None as its string."""
    values, texts = {}, {}
    for key, value in row.items():
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if math.isfinite(value):
                values[key] = float(value)
        elif value is not None:
            texts[key] = str(value)
    return values, texts


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Leaves of a nested config as ``{"loop.bias": "1.0", ...}`` (dotted keys, string values)."""
    leaves = {}
    for key, value in config.items():
        if isinstance(value, dict):
            leaves.update(flatten(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = str(value)
    return leaves
