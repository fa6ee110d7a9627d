"""Radioactivity test: was a generative model trained on data marked with a given key?

    res = radioactivity_test(matches, clean_matches, alpha=0.01)
    matches:        (M, K) bool, decoded bit == the key's message bit, on M samples of the model
    clean_matches:  (M0, K) bool, the same on M0 samples of a model trained on clean data (same
                    model class, data, training budget and sampling bias): the calibration
    res.p_value, res.flagged, res.bit_accuracy, res.clean_bit_accuracy, ...

(``matches`` is what ``watermark.Detector.matches(x)`` returns; this module takes the tensor.)

Uncalibrated test. If decoded bits on a clean model's samples were i.i.d. fair coins, the total
T = Σ_ij matches_ij of the M·K bits would be Binomial(MK, 1/2), and
p_binomial = P(Bin(MK, 1/2) >= T) = ``scipy.stats.binom.sf(T - 1, MK, 0.5)``. Real decoders on
generated images are neither fair nor independent: each bit has its own match rate (bias), and one
image's bits move together (an image that happens to align with the carriers shifts all of them),
so var(T) = M·var(k) exceeds MK/4. Over MK bits a bias of
0.01 per bit is 0.02·sqrt(MK) binomial standard deviations (3.6 at M = 1000, K = 32), and
overdispersion widens the real null further: the binomial FPR can be anywhere up to 1.

Calibrated test (``clean_matches`` given). Work with per-image counts k_i = Σ_j matches_ij (0..K).
Samples of one model are i.i.d., so k_1..k_M are i.i.d.; under H0 (the model was trained on clean
data, like the calibration model) the k^0 of the clean model's M0 samples are i.i.d. with the same
mean. Bit biases and within-image correlation only set the unknown mean and variance of k, which
are estimated from the data: per-image totals absorb the correlation, and no model of the bits is
needed. H1: the model reproduces the mark, mean(k) > mean(k^0). Welch's one-sided t-test:

    t = (k̄ − k̄0) / sqrt(s²/M + s0²/M0)
    df = (s²/M + s0²/M0)² / ((s²/M)²/(M−1) + (s0²/M0)²/(M0−1))      (Welch–Satterthwaite)
    p_welch = P(t_df >= t) = ttest_ind(k, k0, equal_var=False, alternative="greater").pvalue

(s², s0² with ddof = 1). Welch rather than the pooled t-test because marking may change var(k) as
well as its mean; rather than a permutation test because it is closed-form and its null is "equal
means" only. k is bounded in 0..K, so the t approximation is accurate from a few dozen samples
per set (measured below at M = 400, M0 = 600).

Decision: p = max(p_welch, p_binomial), flagged when p <= alpha. A maximum of p-values is valid as
soon as one of them is (P(max <= a) <= P(p_welch <= a) <= a), and the binomial term keeps the test
from ever being more lenient than the analytic one (as in ``watermark.detector``): a flagged model
matches the key more often than its clean twin *and* more often than chance. Its cost is power when
the clean model matches below 1/2 and the marked one only closes part of that gap. Without
``clean_matches`` the test is the binomial one alone (``method`` says so): use it only with a
decoder known to be fair and independent on such images.

What calibration does not cover: H0 is "the same mean k as *this* clean model". Two clean models
trained with different seeds can differ slightly in decoder bias on their samples; with very large
M and M0 the test would detect that difference. Check it on the run's own models: a second clean
model (another seed) tested against the first must not be flagged.

Measured (tests/eval/test_radioactivity.py; K = 32, per-bit biases U(−0.03, 0.05), a per-image
latent shift of all bits with sd 0.1, i.e. var(k) ~2.2x binomial; M = 400, M0 = 600; 2,000 null
replicates): calibrated FPR 0.012 at alpha = 0.01 and 0.050 at 0.05; binomial FPR 0.49 and 0.64.
Power at +0.02 match rate per bit, M = M0 = 2,000: 1.00 over 200 replicates.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import stats

__all__ = ["RadioactivityResult", "radioactivity_test", "welch_greater"]


@dataclass(frozen=True)
class RadioactivityResult:
    """Outcome of :func:`radioactivity_test` (plain Python numbers)."""
    p_value: float             # decision: max(p_value_welch, p_value_binomial); binomial alone
                               # without calibration
    p_value_binomial: float    # uncalibrated: matched_total vs Binomial(M·K, 1/2)
    p_value_welch: float       # one-sided Welch test on per-image counts (NaN: no calibration)
    matched_total: int         # T, matched bits over all M·K
    n_samples: int             # M
    num_bits: int              # K
    n_clean: int               # M0 (0: no calibration)
    bit_accuracy: float        # T / (M·K)
    clean_bit_accuracy: float  # the same on the clean model's samples (NaN: no calibration)
    z: float                   # Welch t; without calibration the binomial z (T − MK/2)/sqrt(MK/4)
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
        clean_matches: (M0, K), the same for samples of a model trained on clean data; None runs
            the uncalibrated binomial test only.
        alpha: false-positive rate of the decision.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    m = _matches(matches, "matches")
    n, kbits = m.shape
    counts = m.sum(1).cpu().numpy().astype(np.int64)
    total, n_bits = int(counts.sum()), n * kbits
    p_bin = float(stats.binom.sf(total - 1, n_bits, 0.5))
    common = dict(p_value_binomial=p_bin, matched_total=total, n_samples=n, num_bits=kbits,
                  bit_accuracy=total / n_bits, alpha=float(alpha))
    if clean_matches is None:
        z = (total - n_bits / 2) / math.sqrt(n_bits / 4)
        return RadioactivityResult(p_value=p_bin, p_value_welch=math.nan, n_clean=0,
                                   clean_bit_accuracy=math.nan, z=z, df=math.nan,
                                   flagged=p_bin <= alpha,
                                   method="binomial (uncalibrated: no clean model)", **common)
    m0 = _matches(clean_matches, "clean_matches")
    if m0.shape[1] != kbits:
        raise ValueError(f"clean_matches has K = {m0.shape[1]} bits, matches K = {kbits}")
    counts0 = m0.sum(1).cpu().numpy().astype(np.int64)
    t, df, p_welch = welch_greater(counts, counts0)
    p = max(p_welch, p_bin)
    return RadioactivityResult(
        p_value=p, p_value_welch=p_welch, n_clean=len(counts0),
        clean_bit_accuracy=float(counts0.sum()) / (len(counts0) * kbits), z=t, df=df,
        flagged=p <= alpha,
        method="max(Welch t on per-image matched counts vs clean model, binomial)",
        **common)
