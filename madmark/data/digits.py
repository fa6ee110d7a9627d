"""Digits: scikit-learn's 1,797 real 8x8 handwritten digits (UCI optdigits), fully offline."""
from __future__ import annotations

import numpy as np

from madmark.data.base import DataSource, Splits
from madmark.data.splitting import split_pool


class Digits(DataSource):
    """1,797 real 8x8 digits from ``sklearn.datasets.load_digits()``.

    Images are float32 ``(N, 1, 8, 8)`` in [0, 1] (the 0-16 grey levels / 16); labels int64 0-9.
    The reference split is a seeded, class-stratified sample of ``n_reference`` digits
    (default 297); train is the other 1,500.

    Args:
        seed: chooses the split.
        n_reference: size of the held-out reference split.
    """

    name = "digits"

    def __init__(self, seed: int = 0, n_reference: int = 297):
        self.seed = seed
        self.n_reference = n_reference

    def _load(self) -> Splits:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (np.asarray(digits.images, dtype=np.float32) / 16.0)[:, None]
        return split_pool(images, digits.target, self.n_reference, self.seed, self.name)
