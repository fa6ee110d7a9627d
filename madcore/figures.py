"""Figures through matplotlib's object API: no pyplot state, no global backend switch.

    fig, axes = new_figure(2, 3, figsize=(12, 6))     # axes (2, 3) array (squeeze=False)
    axes[0, 0].plot(...)
    save_png(fig, run_dir / "plots" / "summary.png")  # atomic; the figure is then discarded

A ``matplotlib.figure.Figure`` made directly renders with the Agg canvas when saved, so the
caller's backend (an interactive session, a notebook) is left as it was.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from madcore.files import atomic_write_bytes


def new_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8),
               squeeze: bool = True, **subplot_kw: Any):
    """A new ``Figure`` and its axes (as ``pyplot.subplots`` returns them)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **subplot_kw)


def save_png(fig, path: str | Path, dpi: int = 100) -> Path:
    """Render ``fig`` as PNG at ``dpi`` and write it to ``path`` atomically; returns the path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
