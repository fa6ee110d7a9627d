"""Gaussian: the standard normal N(0, I) in ``dim`` dimensions, an analytic vector source."""
from __future__ import annotations

import torch

from madmark.data.base import DataSource, Splits
from madcore.errors import MadmarkError


def check_positive(**values: int) -> None:
    """Raise :class:`MadmarkError` for any ``data.<key>`` that is not a positive integer."""
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise MadmarkError(f"data.{key}={v!r} is not a positive integer",
                               f"set data.{key}=<int >= 1>")


class Gaussian(DataSource):
    """Samples of N(0, I_dim): float32 ``(N, dim)``, with the true moments attached.

    Train and reference are independent draws from one ``torch.Generator`` seeded by ``seed``
    (train first); :meth:`draw_real` draws new samples from the true distribution with the
    caller's generator, so the fresh-data loop never reuses a sample.

    Args:
        seed: seeds the train and reference draws.
        dim: dimension D (default 8).
        n_train / n_reference: split sizes (default 2,000 each).
    """

    name = "gaussian"

    def __init__(self, seed: int = 0, dim: int = 8, n_train: int = 2000, n_reference: int = 2000):
        self.seed = seed
        self.dim = dim
        self.n_train = n_train
        self.n_reference = n_reference

    def _load(self) -> Splits:
        check_positive(dim=self.dim, n_train=self.n_train, n_reference=self.n_reference)
        g = torch.Generator().manual_seed(self.seed)
        train = self.draw_real(self.n_train, g)
        reference = self.draw_real(self.n_reference, g)
        return Splits(train=train, reference=reference, kind="vector",
                      true_mean=torch.zeros(self.dim, dtype=torch.float64),
                      true_cov=torch.eye(self.dim, dtype=torch.float64))

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` new samples of N(0, I): float32 ``(n, dim)``."""
        return torch.randn(n, self.dim, generator=generator, dtype=torch.float32)
