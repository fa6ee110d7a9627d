"""eval.radioactivity: empirical validity on biased, correlated null bits (where the binomial test
fails), power, and the statistics against scipy."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from eval.radioactivity import (RadioactivityResult, radioactivity_test, sign_flip_p_value,
                                welch_greater)

K = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _simulate(reps, m, m0, shift=0.0, drift=0.0, seed=0, chunk=250):
    """Matched bits of `reps` replicates: yields (M, K) tested and (M0, K) clean matrices.

    A decoder on generated images, as a null that breaks the binomial test: every replicate draws a
    random message, so each bit's decoder bias b_j (magnitude U(0, 0.08)) leans toward or away from
    the message bit with a fair sign; every image draws a latent u_i ~ N(0, 0.1²) that shifts all of
    its K bits together (var(k) ~ 2x the binomial K/4). The tested model's bits match with
    probability 0.5 + b_j + δ_j + u_i + shift, the clean model's with 0.5 + b_j + u_i, where
    δ_j ~ N(0, drift²) is how the tested model's outputs differ from the clean one's (random sign:
    under H0 neither model knows the message).
    """
    g = torch.Generator().manual_seed(seed)
    for start in range(0, reps, chunk):
        r = min(chunk, reps - start)
        sign = torch.randint(0, 2, (r, 1, K), generator=g) * 2 - 1
        b = sign * torch.rand(r, 1, K, generator=g) * 0.08
        delta = torch.randn(r, 1, K, generator=g) * drift
        u = torch.randn(r, m + m0, 1, generator=g) * 0.1
        p = (0.5 + b + u).clamp(0, 1)
        p[:, :m] = (p[:, :m] + delta + shift).clamp(0, 1)
        bits = torch.rand(r, m + m0, K, generator=g) < p
        for i in range(r):
            yield bits[i, :m], bits[i, m:]


@pytest.fixture(scope="module")
def null_p_values():
    """(sign-flip, binomial, welch) p-values of 2,000 null replicates, M = M0 = 1,000, where the
    tested model's per-bit match rates drift from the clean model's by N(0, 0.05²) (about the
    1.2-point mean bit-accuracy gap measured between generations 1 and 2 of an unmarked MNIST loop:
    0.05 / sqrt(32) = 0.009 per bit on average)."""
    out = [radioactivity_test(x, x0) for x, x0 in _simulate(2000, 1000, 1000, drift=0.05, seed=1)]
    return (np.array([r.p_value for r in out]), np.array([r.p_value_binomial for r in out]),
            np.array([r.p_value_welch for r in out]))


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_sign_flip_test_holds_its_fpr_where_binomial_and_welch_do_not(null_p_values, alpha):
    p, p_bin, p_welch = null_p_values
    reps = len(p)
    bound = 1.5 * alpha + 3 * math.sqrt(1.5 * alpha * (1 - 1.5 * alpha) / reps)
    fpr, fpr_bin, fpr_welch = (p <= alpha).mean(), (p_bin <= alpha).mean(), (p_welch <= alpha).mean()
    print(f"alpha={alpha}: sign-flip FPR {fpr:.4f} (bound {bound:.4f}), binomial FPR {fpr_bin:.3f}, "
          f"Welch vs clean model FPR {fpr_welch:.3f}")
    assert fpr <= bound
    assert fpr_bin >= 5 * alpha
    assert fpr_welch >= 3 * alpha      # a drifting model fools the clean-model calibration


def test_sign_flip_p_values_are_uniform_enough_under_the_null(null_p_values):
    p, _, _ = null_p_values
    for a in (0.01, 0.05, 0.2, 0.5):                  # P(p <= a) <= a up to sampling error
        assert (p <= a).mean() <= a + 3 * math.sqrt(a * (1 - a) / len(p))


def test_sign_flip_equals_enumeration_of_all_messages():
    g = torch.Generator().manual_seed(3)
    for n, k, rate in [(50, 10, 0.55), (7, 12, 0.5), (200, 9, 0.45)]:
        m = torch.rand(n, k, generator=g) < rate
        d = (2 * m.sum(0) - n).numpy()
        t = d.sum()
        signs = np.array(list(itertools.product((-1, 1), repeat=k)))
        want = ((signs * np.abs(d)).sum(1) >= t).mean()
        p, z = sign_flip_p_value(m)
        assert p == pytest.approx(want, abs=1e-12)
        assert z == pytest.approx(t / math.sqrt((d.astype(float) ** 2).sum()))


def test_power_at_a_small_shift():
    """+0.05 match probability per bit toward the message (bit accuracy ~0.55), M = 2,000, K = 32:
    flagged in >= 90 % of replicates despite the same per-bit biases and drift as the null (they
    are the test's noise: power grows with K and with the shift relative to the biases, not M)."""
    flags = [radioactivity_test(x, alpha=0.01).flagged
             for x, _ in _simulate(200, 2000, 2, shift=0.05, drift=0.05, seed=2, chunk=50)]
    print(f"power {np.mean(flags):.3f}")
    assert np.mean(flags) >= 0.9


def test_a_model_that_reproduces_the_mark_reaches_the_floor():
    x = torch.rand(300, K, generator=torch.Generator().manual_seed(4)) < 0.9
    res = radioactivity_test(x)
    assert res.p_value == pytest.approx(2.0 ** -K) and res.flagged


def test_statistics_match_scipy():
    g = np.random.default_rng(0)
    k = g.binomial(K, 0.55, size=300)
    k0 = g.binomial(K, 0.5, size=500)
    ref = stats.ttest_ind(k, k0, equal_var=False, alternative="greater")
    t, df, p = welch_greater(k, k0)
    assert t == pytest.approx(ref.statistic, rel=1e-10)
    assert p == pytest.approx(ref.pvalue, rel=1e-8)
    assert df == pytest.approx(ref.df, rel=1e-10)
    # the same through radioactivity_test, from matched-bit matrices with those row counts
    def rows(counts):
        return torch.arange(K)[None, :] < torch.as_tensor(counts)[:, None]
    res = radioactivity_test(rows(k), rows(k0), alpha=0.05)
    assert res.p_value_welch == pytest.approx(ref.pvalue, rel=1e-8)
    total = int(k.sum())
    assert res.matched_total == total and res.n_samples == 300 and res.n_clean == 500
    assert res.p_value_binomial == pytest.approx(
        stats.binomtest(total, 300 * K, 0.5, alternative="greater").pvalue, rel=1e-8)
    assert res.p_value == sign_flip_p_value(rows(k))[0]
    assert res.flagged == (res.p_value <= 0.05)
    assert res.bit_accuracy == pytest.approx(total / (300 * K))
    assert res.clean_bit_accuracy == pytest.approx(k0.sum() / (500 * K))


def test_without_a_clean_model_only_the_diagnostics_change():
    x = torch.zeros(10, 8, dtype=torch.bool)
    x[:, :5] = True                                             # 50 of 80 bits
    res = radioactivity_test(x.int())
    assert res.p_value_binomial == pytest.approx(
        stats.binomtest(50, 80, 0.5, alternative="greater").pvalue)
    # D = (10, 10, 10, 10, 10, -10, -10, -10): T = 20 is reached by 5 + 3 choose ... sign patterns
    signs = np.array(list(itertools.product((-1, 1), repeat=8)))
    assert res.p_value == pytest.approx(((signs * 10).sum(1) >= 20).mean())
    assert math.isnan(res.p_value_welch) and res.n_clean == 0 and "sign-flip" in res.method
    assert set(res.as_dict()) == {"radio_" + f for f in RadioactivityResult.__dataclass_fields__}


def test_degenerate_and_invalid_inputs():
    ones, zeros = torch.ones(20, K, dtype=torch.bool), torch.zeros(20, K, dtype=torch.bool)
    assert radioactivity_test(ones, ones).p_value == pytest.approx(2.0 ** -K)   # all bits match
    assert radioactivity_test(zeros, ones).p_value == 1.0 and not radioactivity_test(zeros).flagged
    res = radioactivity_test(ones, zeros)
    assert res.p_value_welch == 0.0 and res.flagged
    half = torch.zeros(20, K, dtype=torch.bool)
    half[:10] = True                                           # every D_j = 0: no evidence at all
    assert radioactivity_test(half).p_value == 1.0
    with pytest.raises(ValueError, match="K = 16"):
        radioactivity_test(ones, torch.ones(20, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="0/1"):
        radioactivity_test(torch.full((4, K), 2))
    with pytest.raises(ValueError, match=">= 2"):
        radioactivity_test(ones[:1], ones)
    with pytest.raises(ValueError, match="alpha"):
        radioactivity_test(ones, alpha=1.0)
