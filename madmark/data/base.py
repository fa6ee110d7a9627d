"""The interface of a data source: a train split for the loop, a held-out reference split for
evaluation, and fresh real draws for the fresh-data loop.

Images are float32 ``(N, C, H, W)`` in [0, 1]; vectors are float32 ``(N, D)``; text is int64
``(N, L)`` token ids (BOS = 0 never occurs; :mod:`madmark.data.text_source`). Labels, where the
source has them, are int64 ``(N,)``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Splits:
    """The real data of a source.

    Attributes:
        train: (N_train, ...) real samples the loop trains on.
        reference: (N_ref, ...) held-out real samples, never trained on; used for evaluation.
        train_labels / reference_labels: int64 (N,) class labels, or None.
        kind: "image", "vector" or "text".
        true_mean / true_cov: for analytic vector sources, the moments of the true distribution
            ((D,), (D, D) float64); None otherwise.
        vocab_size: for text, the tokenizer's number of ids (BOS included; every id of the
            splits and of a model's samples is below it); None otherwise.
    """

    train: torch.Tensor
    reference: torch.Tensor
    kind: str
    train_labels: Optional[torch.Tensor] = None
    reference_labels: Optional[torch.Tensor] = None
    true_mean: Optional[torch.Tensor] = None
    true_cov: Optional[torch.Tensor] = None
    vocab_size: Optional[int] = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


class DataSource(ABC):
    """A source of real data. Constructed from ``configs/data/<name>.yaml`` by Hydra ``_target_``.

    Constructors only store settings; :meth:`load` does the I/O and may raise
    :class:`madcore.errors.MadmarkError` naming the problem and its fix.
    """

    name: str = "source"

    _splits: Optional[Splits] = None

    def load(self) -> Splits:
        """The train and reference splits; loaded once (by :meth:`_load`) and cached."""
        if self._splits is None:
            self._splits = self._load()
        return self._splits

    @abstractmethod
    def _load(self) -> Splits:
        """Load (or generate) the train and reference splits, deterministically from the seed."""

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` real samples for one generation of the fresh-data loop.

        Default: a random subset of the train split (without replacement within the draw), so
        successive generations see different, independently chosen real samples. Analytic sources
        override this to draw new samples from the true distribution.
        """
        return self.draw_real_labeled(n, generator)[0]

    def draw_real_labeled(self, n: int, generator: torch.Generator
                          ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Like :meth:`draw_real`, with the samples' int64 (n,) class labels (None if unlabelled).

        Sources that override :meth:`draw_real` (analytic ones, without labels) get their draws
        through it, so both methods always agree.
        """
        if type(self).draw_real is not DataSource.draw_real:
            return self.draw_real(n, generator), None
        splits = self.load()
        train = splits.train
        if n > len(train):
            from madcore.errors import MadmarkError
            raise MadmarkError(
                f"the fresh-data loop asks for n_real={n} samples but data '{self.name}' has only "
                f"{len(train)} train samples", f"set loop.n_real <= {len(train)}")
        idx = torch.randperm(len(train), generator=generator)[:n]
        labels = None if splits.train_labels is None else splits.train_labels[idx]
        return train[idx], labels
