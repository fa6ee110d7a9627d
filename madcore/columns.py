"""Declared results.csv columns: each name once, with what it means, its unit and what it is
computed on.

A producer (code that writes row keys) declares its columns next to that code::

    COLUMNS = (
        Column("n_pool", "samples in the training pool", "count", "the pool fitted on"),
        Column("fid", "Fréchet distance", "feature units²", "S_t vs the reference split",
               when="eval.fid"),
    )

and the application gathers every producer into one :class:`ColumnRegistry`; consumers (reports,
tables, plots) look their column names up there, so a renamed or misspelt column raises
:class:`UndeclaredColumn` instead of silently vanishing from a table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Column:
    """One results.csv column.

    Attributes:
        name: the column's name in results.csv.
        meaning: what the number (or text) is, one sentence.
        unit: e.g. ``"fraction in [0, 1]"``, ``"dB"``, ``"count"``, ``"watermark layers"``,
            ``"text"`` for non-numeric columns.
        computed_on: what the value is computed on, e.g. ``"S_t (unmarked samples) vs the
            reference split"``, ``"the pool before the fit"``, ``"wall clock"``.
        when: a narrower condition than its producer's (e.g. ``"eval.fid"``); empty: written
            whenever its producer runs.
    """

    name: str
    meaning: str
    unit: str
    computed_on: str
    when: str = ""


@dataclass(frozen=True)
class Producer:
    """Code that writes a set of columns into every row of the runs where it runs.

    Attributes:
        name: where the columns are written, e.g. ``"loops.stages.FilterStage"``.
        when: in which runs it writes them, e.g. ``"every run"``, ``"runs with `filter=detector`"``.
        columns: its declarations, in the order it writes them.
    """

    name: str
    when: str
    columns: tuple[Column, ...]


class UndeclaredColumn(LookupError):
    """A column name that no producer declares (a typo, or a rename not followed)."""


def names(columns: Iterable[Column]) -> tuple[str, ...]:
    """The names of ``columns``, in order."""
    return tuple(c.name for c in columns)


class ColumnRegistry:
    """Every declared column, by name.

    A name may be declared by several producers (e.g. ``fit_steps`` by three models) only with
    equal declarations; anything else raises ValueError when the registry is built.
    """

    def __init__(self, producers: Iterable[Producer]):
        self.producers: tuple[Producer, ...] = tuple(producers)
        self._columns: dict[str, Column] = {}
        self._by: dict[str, list[str]] = {}
        seen: set[str] = set()
        for p in self.producers:
            if p.name in seen:
                raise ValueError(f"producer {p.name} is registered twice")
            seen.add(p.name)
            for c in p.columns:
                known = self._columns.setdefault(c.name, c)
                if known != c:
                    raise ValueError(f"column {c.name} is declared differently by "
                                     f"{', '.join(self._by[c.name])} and {p.name}")
                self._by.setdefault(c.name, []).append(p.name)

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __getitem__(self, name: str) -> Column:
        if name not in self._columns:
            raise UndeclaredColumn(f"results.csv column {name!r} is not declared by any "
                                   "producer (a typo, or a renamed column)")
        return self._columns[name]

    def __iter__(self):
        return iter(self._columns.values())

    def get(self, name: str) -> Column | None:
        """The declaration of ``name``, or None when no producer declares it."""
        return self._columns.get(name)

    def producers_of(self, name: str) -> tuple[str, ...]:
        """Names of the producers declaring ``name`` (raises UndeclaredColumn when none)."""
        self[name]
        return tuple(self._by[name])

    def require(self, columns: Iterable[str]) -> tuple[str, ...]:
        """``columns`` as a tuple, after checking every one is declared; UndeclaredColumn names
        all that are not."""
        columns = tuple(columns)
        missing = [c for c in columns if c not in self._columns]
        if missing:
            raise UndeclaredColumn(f"results.csv columns not declared by any producer (a typo, or "
                                   f"a renamed column): {', '.join(map(repr, missing))}")
        return columns
