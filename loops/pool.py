"""A training pool: samples with their provenance.

Provenance is ground truth for *measuring* the filter and the loop; it is never shown to a filter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from madcore.columns import Column

#: label of a sample whose class is unknown (unlabelled data, or drawn by an unconditional model)
NO_LABEL = -1

_ON = "generation t's training pool, after the filter (provenance)"
#: the columns of :meth:`Pool.composition`, in order
COLUMNS = (
    Column("n_pool", "samples in the training pool", "count", _ON),
    Column("n_real", "real samples in the pool (origin 0)", "count", _ON),
    Column("n_synthetic", "synthetic samples in the pool (drawn by earlier generations)", "count",
           _ON),
    Column("n_marked", "pool samples carrying a watermark", "count", _ON),
    Column("real_fraction", "n_real ÷ n_pool (NaN for an empty pool)", "fraction in [0, 1]", _ON),
    Column("origin_counts", "samples per origin, e.g. g0=4000 g1=4000 (g0 = real, gk = drawn "
           "by generation k)", "text", _ON),
)


@dataclass
class Pool:
    """Samples and where they came from.

    Attributes:
        x: (N, D) vectors or (N, C, H, W) images.
        origin: int64 (N,): 0 = real, t = synthetic from generation t.
        marked: bool (N,): the sample carries a watermark.
        label: int64 (N,) class labels, :data:`NO_LABEL` (-1) where unknown; all -1 when omitted.
    """

    x: torch.Tensor
    origin: torch.Tensor
    marked: torch.Tensor
    label: Optional[torch.Tensor] = None

    def __post_init__(self):
        n = len(self.x)
        if self.label is None:
            self.label = torch.full((n,), NO_LABEL, dtype=torch.long, device=self.x.device)
        if self.origin.shape != (n,) or self.marked.shape != (n,) or self.label.shape != (n,):
            raise ValueError(f"provenance shapes {tuple(self.origin.shape)}, {tuple(self.marked.shape)}, "
                             f"{tuple(self.label.shape)} do not match {n} samples")

    def __len__(self) -> int:
        return len(self.x)

    @classmethod
    def real(cls, x: torch.Tensor, label: Optional[torch.Tensor] = None) -> "Pool":
        """Real, unmarked samples (origin 0), with their class labels if known."""
        n = len(x)
        return cls(x, torch.zeros(n, dtype=torch.long, device=x.device),
                   torch.zeros(n, dtype=torch.bool, device=x.device), label)

    @classmethod
    def synthetic(cls, x: torch.Tensor, generation: int, marked: bool = False,
                  label: Optional[torch.Tensor] = None) -> "Pool":
        """Samples drawn from the model of ``generation`` (origin = generation), with the labels
        they were conditioned on (conditional models)."""
        n = len(x)
        return cls(x, torch.full((n,), generation, dtype=torch.long, device=x.device),
                   torch.full((n,), marked, dtype=torch.bool, device=x.device), label)

    @classmethod
    def cat(cls, pools: list["Pool"]) -> "Pool":
        if not pools:
            raise ValueError("cannot concatenate an empty list of pools")
        return cls(torch.cat([p.x for p in pools]), torch.cat([p.origin for p in pools]),
                   torch.cat([p.marked for p in pools]), torch.cat([p.label for p in pools]))

    def subset(self, keep: torch.Tensor) -> "Pool":
        """The samples where the boolean mask ``keep`` (N,) is true."""
        return Pool(self.x[keep], self.origin[keep], self.marked[keep], self.label[keep])

    def to(self, device: torch.device | str) -> "Pool":
        return Pool(self.x.to(device), self.origin.to(device), self.marked.to(device),
                    self.label.to(device))

    def labels(self) -> Optional[torch.Tensor]:
        """The class labels (N,) when every sample has one, else None (what a model's fit takes)."""
        return self.label if len(self) and bool((self.label >= 0).all()) else None

    def composition(self) -> dict[str, float | int | str]:
        """Counts by origin for a generation's row: n_pool, n_real, n_synthetic, n_marked,
        real_fraction and origin_counts (e.g. ``"g0=4000 g1=4000"``)."""
        origins, counts = torch.unique(self.origin.cpu(), return_counts=True)
        n = len(self)
        n_real = int(counts[origins == 0].sum())
        return {
            "n_pool": n,
            "n_real": n_real,
            "n_synthetic": n - n_real,
            "n_marked": int(self.marked.sum()),
            "real_fraction": n_real / n if n else float("nan"),
            "origin_counts": " ".join(f"g{int(o)}={int(c)}" for o, c in zip(origins, counts)),
        }
