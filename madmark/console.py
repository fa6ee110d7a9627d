"""Terminal output: per-generation progress bars and the final results table."""
from __future__ import annotations

import math
import sys
from typing import Any, Optional

from tqdm.auto import tqdm

_HIDDEN = ("family", "history", "origin_counts")


class GenerationProgress:
    """One tqdm bar per generation, advanced by the model's ``fit`` progress callback."""

    def __init__(self, generations: int, enabled: bool = True):
        self.generations = generations
        self.enabled = enabled
        self.bar: Optional[tqdm] = None

    def __call__(self, t: int):
        if not self.enabled:
            return None
        self.close()
        self.bar = tqdm(desc=f"generation {t}/{self.generations}", unit="it", leave=True,
                        file=sys.stderr, dynamic_ncols=True)

        def update(step: int, total: int) -> None:
            if self.bar is not None:
                self.bar.total = total
                self.bar.n = step
                self.bar.refresh()
        return update

    def close(self, *_: Any) -> None:
        if self.bar is not None:
            self.bar.total = self.bar.n      # EM may converge before max_iter: show what ran
            self.bar.refresh()
            self.bar.close()
            self.bar = None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def format_table(rows: list[dict[str, Any]], hidden: tuple[str, ...] = _HIDDEN) -> str:
    """Rows as an aligned text table (columns in order of first appearance)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns and k not in hidden)
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
