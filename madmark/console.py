"""Terminal output: per-generation progress bars and the final results table."""
from __future__ import annotations

import math
import sys
from typing import Any, Optional

from tqdm.auto import tqdm

from madmark.columns import declared


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


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...],
                 settings: tuple[str, ...] = ()) -> str:
    """The ``columns`` present in ``rows`` as an aligned text table, then one line naming the
    ``settings`` the metrics were computed on (taken from the first row). Every column and
    setting asked for must be declared (:func:`madmark.columns.declared`, UndeclaredColumn
    otherwise); declared ones no row has are left out."""
    columns = [c for c in declared(columns) if any(c in r for r in rows)]
    settings = declared(settings)
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    named = [f"{c}={rows[0][c]}" for c in settings if rows and c in rows[0]]
    if named:
        lines.append("metrics computed on: " + ", ".join(named))
    return "\n".join(lines)
