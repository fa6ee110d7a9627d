"""Radioactivity test: was a generative model trained on data marked with a given key?

    res = radioactivity_test(matches, clean_matches=None, alpha=0.01)
    matches:        (M, K) bool, decoded bit == the key's message bit, on M samples of the model
    clean_matches:  optional (M0, K) bool, the same on samples of a model trained on clean data
                    (reported for comparison: ``clean_bit_accuracy``, ``p_value_welch``)
    res.p_value (exact sign-flip test), res.flagged, res.bit_accuracy, ...

(``matches`` is what ``watermark.Detector.matches(x)`` returns; this module takes the tensor.)

Uncalibrated test. If decoded bits on a clean model's samples were i.i.d. fair coins, the total
T = Σ_ij matches_ij of the M·K bits would be Binomial(MK, 1/2), and
p_binomial = P(Bin(MK, 1/2) >= T) = ``scipy.stats.binom.sf(T - 1, MK, 0.5)``. Real decoders on
generated images are neither fair nor independent: each bit has its own match rate (bias), and one
image's bits move together (an image that happens to align with the carriers shifts all of them),
so var(T) = M·var(k) exceeds MK/4. Over MK bits a bias of
0.01 per bit is 0.02·sqrt(MK) binomial standard deviations (3.6 at M = 1000, K = 32), and
overdispersion widens the real null further: the binomial FPR can be anywhere up to 1.

Decision: the message sign-flip test (exact, needs no clean model). For bit j let
D_j = #{i: bit j of sample i matches m_j} − #{i: it does not} = 2·c_j − M, and T = Σ_j D_j. If the
model was not trained on data marked with this key, its samples are independent of the secret
message m, which the key draws uniformly from {0, 1}^K (SHAKE-256): flipping message bit j only
flips the sign of D_j. So, *conditionally on the samples*, the statistic for the actual message is
one draw of T* = Σ_j ε_j |D_j| with independent fair signs ε_j, and

    p_sign_flip = P(T* >= T) = 2^-K · #{ε ∈ {±1}^K : Σ_j ε_j |D_j| >= T},

computed exactly by dynamic programming over the subset sums of |D_j| (O(K² M)). This conditional
randomization test is valid whatever the decoder's per-bit biases, the correlation between the bits
of one sample, or how the tested model's outputs differ from any other model's: the only randomness
it uses is the key's. Its floor is 2^-K (2.3e-10 at K = 32), reached when every bit leans toward
the message, i.e. a model that reproduces the mark.

Why not calibrate against a clean model's samples. The first version of this module compared the
per-sample matched counts with those of a model trained on clean data (one-sided Welch t-test, still
reported as ``p_value_welch``). It is valid only if the two models give the decoder the same bias,
and they do not: in a fully synthetic MNIST loop with no mark anywhere, generation 2's model matched
the key on 51.5 % of bits against 50.3 % for generation 1's (M = 1,000), p_welch = 0.0009, a false
flag. Every model drifts, and a drift's projection on the message bits is noise the Welch test
counts as signal; the sign-flip test sees it as what it is, a per-bit bias of random sign.

Reported too: ``p_value_binomial`` = P(Bin(MK, 1/2) >= Σ_ij matches_ij), which assumes i.i.d. fair
bits (false for real decoders: over-dispersed and biased), and ``p_value_welch`` against the clean
model when one is given. Neither decides.

Measured (tests/eval/test_radioactivity.py): see the tests for the null FPRs of the sign-flip,
Welch and binomial tests on biased, correlated bits whose bias differs between the tested and the
clean model, and the power of the sign-flip test.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

__all__ = ["RadioactivityResult", "radioactivity_test", "sign_flip_p_value", "welch_greater"]


@dataclass(frozen=True)
class RadioactivityResult:
    """Outcome of :func:`radioactivity_test` (plain Python numbers)."""
    p_value: float             # decision: the exact message sign-flip test
    p_value_binomial: float    # diagnostic: matched_total vs Binomial(M·K, 1/2) (i.i.d. fair bits)
    p_value_welch: float       # diagnostic: Welch test on per-image counts vs the clean model
                               # (NaN: no clean model)
    matched_total: int         # T, matched bits over all M·K
    n_samples: int             # M
    num_bits: int              # K
    n_clean: int               # M0 (0: no calibration)
    bit_accuracy: float        # T / (M·K)
    clean_bit_accuracy: float  # the same on the clean model's samples (NaN: no calibration)
    z: float                   # sign-flip statistic T / sqrt(Σ D_j²) (its null sd), ~N(0, 1) in K
    df: float                  # Welch–Satterthwaite degrees of freedom (NaN: none)
    alpha: float
    flagged: bool              # p_value <= alpha
    method: str

    def as_dict(self, prefix: str = "radio_") -> dict:
        """Columns for a results row, each name prefixed."""
        return {prefix + k: v for k, v in asdict(self).items()}


def _matches(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{name}: expected an (M, K) matrix of matched bits, "
                         f"got shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if not ((t == 0) | (t == 1)).all():
            raise ValueError(f"{name} must hold matched bits: bool or 0/1")
        t = t != 0
    return t


def sign_flip_p_value(matches) -> tuple[float, float]:
    """Exact message sign-flip test on matched bits (M, K): (p, z), see the module docstring.

    p = P(Σ_j ε_j |D_j| >= Σ_j D_j) over fair signs ε, D_j = 2·(matches in column j) − M;
    z = Σ D_j / sqrt(Σ D_j²) (the null standard deviation), for reading only.
    """
    m = _matches(matches, "matches")
    n = m.shape[0]
    d = (2 * m.sum(0).to(torch.int64) - n).cpu().numpy()
    a = np.abs(d)
    total, t = int(a.sum()), int(d.sum())
    pmf = np.zeros(total + 1)
    pmf[0] = 1.0
    for v in a[a > 0]:                        # subset sums U = Σ_j b_j |D_j|, b_j fair coins
        shifted = np.zeros_like(pmf)
        shifted[v:] = pmf[:-v] if v else pmf
        pmf = 0.5 * (pmf + shifted)
    u_obs = (t + total) // 2                  # T* >= T  <=>  U >= (T + Σ|D|) / 2 (same parity)
    p = float(pmf[u_obs:].sum()) if total else 1.0
    z = t / math.sqrt(float((d.astype(np.float64) ** 2).sum())) if total else 0.0
    return min(1.0, p), z


def welch_greater(k: np.ndarray, k0: np.ndarray) -> tuple[float, float, float]:
    """One-sided Welch test of mean(k) > mean(k0): (t, df, p), float64 (ddof = 1 variances).

    Both sets constant (zero standard error): t = ±inf and p = 0 when k̄ > k̄0, else t = 0, p = 1.
    """
    k, k0 = np.asarray(k, dtype=np.float64), np.asarray(k0, dtype=np.float64)
    if k.size < 2 or k0.size < 2:
        raise ValueError(f"the Welch test needs >= 2 values per set, got {k.size} and {k0.size}")
    v, v0 = k.var(ddof=1) / k.size, k0.var(ddof=1) / k0.size
    diff, se2 = k.mean() - k0.mean(), v + v0
    if se2 == 0:
        return (math.inf, math.nan, 0.0) if diff > 0 else (0.0 if diff == 0 else -math.inf,
                                                         math.nan, 1.0)
    t = diff / math.sqrt(se2)
    df = se2 ** 2 / (v ** 2 / (k.size - 1) + v0 ** 2 / (k0.size - 1))
    return float(t), float(df), float(stats.t.sf(t, df))


def radioactivity_test(matches, clean_matches=None, alpha: float = 0.01) -> RadioactivityResult:
    """Aggregate test that a model's samples carry the key's message (see the module docstring).

    Args:
        matches: (M, K) bool (or 0/1): bit j of sample i decodes to the message bit.
        clean_matches: optional (M0, K), the same for samples of a model trained on clean data,
            for the reported comparison (``clean_bit_accuracy``, ``p_value_welch``).
        alpha: false-positive rate of the decision (the sign-flip p-value <= alpha).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    m = _matches(matches, "matches")
    n, kbits = m.shape
    counts = m.sum(1).cpu().numpy().astype(np.int64)
    total, n_bits = int(counts.sum()), n * kbits
    p_bin = float(stats.binom.sf(total - 1, n_bits, 0.5))
    p, z = sign_flip_p_value(m)
    p_welch, df, n_clean, clean_acc = math.nan, math.nan, 0, math.nan
    if clean_matches is not None:
        m0 = _matches(clean_matches, "clean_matches")
        if m0.shape[1] != kbits:
            raise ValueError(f"clean_matches has K = {m0.shape[1]} bits, matches K = {kbits}")
        counts0 = m0.sum(1).cpu().numpy().astype(np.int64)
        _, df, p_welch = welch_greater(counts, counts0)
        n_clean, clean_acc = len(counts0), float(counts0.sum()) / (len(counts0) * kbits)
    return RadioactivityResult(
        p_value=p, p_value_binomial=p_bin, p_value_welch=p_welch, matched_total=total,
        n_samples=n, num_bits=kbits, n_clean=n_clean, bit_accuracy=total / n_bits,
        clean_bit_accuracy=clean_acc, z=z, df=df, alpha=float(alpha), flagged=p <= alpha,
        method="exact message sign-flip test on per-bit match counts")
