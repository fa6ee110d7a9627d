"""One-sided tail probabilities of the text-watermark tests, in log space, exact far below 1e-300.

scipy's ``binom.logsf`` and ``gamma.logsf`` are the log of a float64 tail, so they return ``-inf``
once the tail underflows (below ~1e-308: a long, strongly marked document, or a large corpus in a
radioactivity test). There the tail is summed term by term in log space (``logsumexp`` of scipy's
log-pmf): the terms fall geometrically away from the observed value by a factor of at most
(mean / observed) ≤ 1/2 once scipy underflows, so :data:`TERMS` terms reach double precision.

    log P(Bin(T, q) ≥ g)  = logsumexp_{k = g .. T}       log Bin(k; T, q)
    log P(Gamma(T, 1) ≥ s) = logsumexp_{k = 0 .. T-1}    log Poisson(k; s)   (integer T)
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from scipy.stats import binom, gamma, poisson

#: terms summed where scipy's tail underflows
TERMS = 512


def binom_logsf(g: np.ndarray, t: np.ndarray, q: float) -> np.ndarray:
    """log P(Bin(t, q) ≥ g), elementwise (g, t integer arrays of one shape)."""
    g, t = np.asarray(g, dtype=np.float64), np.asarray(t, dtype=np.float64)
    out = np.asarray(binom.logsf(g - 1, t, q), dtype=np.float64)
    deep = ~np.isfinite(out) & (g <= t)
    if deep.any():
        k = g[deep][:, None] + np.arange(TERMS)[None, :]
        terms = np.where(k <= t[deep][:, None], binom.logpmf(k, t[deep][:, None], q), -np.inf)
        out[deep] = logsumexp(terms, axis=1)
    return out


def gamma_logsf(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """log P(Gamma(t, 1) ≥ s) for integer shapes t ≥ 1, elementwise."""
    s, t = np.asarray(s, dtype=np.float64), np.asarray(t, dtype=np.float64)
    out = np.asarray(gamma.logsf(s, t), dtype=np.float64)
    deep = ~np.isfinite(out) & (s > 0)
    if deep.any():
        k = t[deep][:, None] - 1 - np.arange(TERMS)[None, :]
        terms = np.where(k >= 0, poisson.logpmf(k, s[deep][:, None]), -np.inf)
        out[deep] = logsumexp(terms, axis=1)
    return out
