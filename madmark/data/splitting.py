"""Seeded train/reference splits shared by the sources that split one pool of real samples."""
from __future__ import annotations

from typing import Optional

import numpy as np

from madcore.errors import MadmarkError


def check_n_reference(n_reference: int, available: int, source: str, min_train: int = 1) -> int:
    """Validate ``n_reference`` against a pool of ``available`` samples; return it as an int."""
    if isinstance(n_reference, bool) or not isinstance(n_reference, (int, np.integer)):
        raise MadmarkError(f"data.n_reference={n_reference!r} for '{source}' is not an integer",
                           "set data.n_reference=<int>")
    n_reference = int(n_reference)
    most = available - min_train
    if not 1 <= n_reference <= most:
        raise MadmarkError(
            f"data.n_reference={n_reference} for '{source}' must be between 1 and {most} "
            f"(the source has {available} samples and needs {min_train} for training)",
            f"set data.n_reference to a value in [1, {most}]")
    return n_reference


def split_indices(n: int, n_reference: int, seed: int,
                  labels: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint ``(train_idx, reference_idx)`` covering ``range(n)``, chosen by ``seed``.

    With ``labels`` the split is stratified: every class gives the reference split a share
    proportional to its size (to within one sample). Both index arrays are sorted, so the sample
    order within a split is the source's order.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    if labels is None:
        ref = perm[:n_reference]
    else:
        # Rank each sample within its class in the random order; taking the n_reference smallest
        # rank fractions draws every class in proportion to its size.
        lab = np.asarray(labels)[perm]
        order = np.argsort(lab, kind="stable")
        classes, starts, counts = np.unique(lab[order], return_index=True, return_counts=True)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - np.repeat(starts, counts)
        size = counts[np.searchsorted(classes, lab)]
        frac = (rank + 0.5) / size
        ref = perm[np.argsort(frac, kind="stable")[:n_reference]]
    mask = np.zeros(n, dtype=bool)
    mask[ref] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def subset_indices(n: int, k: Optional[int], seed, what: str, key: str) -> np.ndarray:
    """Sorted random subset of ``k`` of ``range(n)`` (all of it when ``k`` is None).

    ``seed`` is anything ``numpy.random.default_rng`` takes, e.g. ``[seed, stream]``.
    """
    if k is None:
        return np.arange(n)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise MadmarkError(f"{key}={k!r} but {what} has {n} samples",
                           f"set {key} to an integer in [1, {n}] or null for all")
    return np.sort(np.random.default_rng(seed).permutation(n)[:int(k)])


def split_pool(images: np.ndarray, labels: Optional[np.ndarray], n_reference: int, seed: int,
               source: str):
    """Split one pool of images ``(N, C, H, W)`` in [0, 1] into :class:`~madmark.data.base.Splits`.

    The split is stratified by ``labels`` when given; labels become int64.
    """
    import torch

    from madmark.data.base import Splits

    n_reference = check_n_reference(n_reference, len(images), source)
    train_idx, ref_idx = split_indices(len(images), n_reference, seed, labels)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = None if labels is None else torch.from_numpy(np.array(labels, dtype=np.int64))
    return Splits(train=x[train_idx], reference=x[ref_idx], kind="image",
                  train_labels=None if y is None else y[train_idx],
                  reference_labels=None if y is None else y[ref_idx])
