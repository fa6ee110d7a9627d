"""Growth factors of per-generation columns: ``<col>_growth`` = value at t ÷ value at a baseline
generation (by default the first generation trained on marked data; see :func:`add_growth`).

    rows = add_growth(rows)      # artifact_energy_growth, band_energy_ratio_growth, growth_baseline

Rows are results rows (dicts with ``generation`` and ``n_marked``); nothing else is read.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from madcore.columns import Column

__all__ = ["add_growth", "growth_baseline", "GROWTH_COLUMNS", "COLUMNS"]

#: columns :func:`add_growth` adds a ``_growth`` column for by default
GROWTH_COLUMNS = ("artifact_energy", "band_energy_ratio")

_ON = "the run's rows: generation t's value ÷ the value at generation growth_baseline"
#: the columns :func:`add_growth` adds with its default ``columns``, in order
COLUMNS = (
    *(Column(f"{c}_growth", f"{c} at t ÷ {c} at the baseline generation (NaN when the baseline "
             "value is missing, ≤ 0 or within noise)", "ratio (1 = as at the baseline)", _ON)
      for c in GROWTH_COLUMNS),
    Column("growth_baseline", "the baseline generation of the growth factors: the first whose "
           "pool held marked samples, else the first", "index (1-based)", "the run's rows "
           "(n_marked)"),
)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _generations(rows: list[dict], key: str) -> list[int]:
    """Each row's generation (its 1-based position where the key is missing or not a number)."""
    gens = [_number(r.get(key)) for r in rows]
    return [int(g) if math.isfinite(g) else i + 1 for i, g in enumerate(gens)]


def growth_baseline(rows: Iterable[dict], generation_key: str = "generation",
                    marked_key: str = "n_marked") -> Optional[int]:
    """The first generation whose training pool held marked samples (``n_marked`` > 0), else the
    first generation (t = 1 in a full run); None for no rows."""
    rows = list(rows)
    gens = _generations(rows, generation_key)
    marked = [g for g, r in zip(gens, rows) if _number(r.get(marked_key, 0)) > 0]
    return min(marked) if marked else (min(gens) if gens else None)


def add_growth(rows: Iterable[dict], columns: Iterable[str] = GROWTH_COLUMNS, *,
               baseline: Optional[int] = None, min_baseline_z: float = 2.0,
               generation_key: str = "generation", marked_key: str = "n_marked") -> list[dict]:
    """Copies of ``rows`` with ``<col>_growth`` = value at t ÷ value at the baseline generation for
    each column, and ``growth_baseline`` (the generation used). Input rows are not modified.

    Baseline. Issue 5 says "÷ value at t = 1", but generation 1 trains on real data only: its
    artifact energy is noise around 0, and a ratio to noise is meaningless (any sign, any size).
    The default (``baseline=None``) is therefore the first generation whose training pool contained
    marked samples (rows carry ``n_marked``, the marked samples in that generation's pool): growth
    then reads "how much stronger the artifact is than after the first exposure to marked data".
    Without any marked pool (no watermark stage) it falls back to the first generation. An int
    picks the baseline generation explicitly.

    Undefined growth is NaN, never an error: baseline generation absent; baseline value missing,
    non-numeric, non-finite or <= 0 (growth is a ratio of positive magnitudes); or, for a column
    whose baseline row also has ``<col>_se``, a baseline within noise, |value / se| < min_baseline_z
    (set 0 to disable). A row missing the column gets NaN in that row only.
    """
    rows = [dict(r) for r in rows]
    gens = _generations(rows, generation_key)
    base = growth_baseline(rows, generation_key, marked_key) if baseline is None else int(baseline)
    base_row = next((r for g, r in zip(gens, rows) if g == base), None)
    for col in columns:
        v0 = _number(base_row.get(col)) if base_row is not None else math.nan
        se = _number(base_row.get(f"{col}_se")) if base_row is not None else math.nan
        if not (math.isfinite(v0) and v0 > 0) or (math.isfinite(se) and se > 0
                                                    and abs(v0 / se) < min_baseline_z):
            v0 = math.nan
        for r in rows:
            v = _number(r.get(col))
            r[f"{col}_growth"] = v / v0 if math.isfinite(v) and math.isfinite(v0) else math.nan
    for r in rows:
        r["growth_baseline"] = base
    return rows
