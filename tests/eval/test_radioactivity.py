"""eval.radioactivity: empirical validity on biased, correlated null bits (where the binomial test
fails), power, and the statistics against scipy."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from eval.radioactivity import RadioactivityResult, radioactivity_test, welch_greater

K = 32


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread on the 2 shared build cores (see tests/watermark/conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _simulate(reps, m, m0, shift=0.0, seed=0, chunk=250):
    """Matched bits of `reps` replicates: yields (M, K) tested and (M0, K) clean matrices.

    A decoder on generated images, as a null that breaks the binomial test: every replicate draws
    per-bit biases b_j ~ U(-0.03, 0.05) (mean +0.01, shared by both models: same decoder, same kind
    of images), and every image a latent u_i ~ N(0, 0.1²) that shifts all of its K bits together
    (var(k) ~ 2.2x the binomial K/4). The tested model's bits match with probability
    0.5 + b_j + u_i + shift, the clean model's with 0.5 + b_j + u_i.
    """
    g = torch.Generator().manual_seed(seed)
    for start in range(0, reps, chunk):
        r = min(chunk, reps - start)
        b = torch.rand(r, 1, K, generator=g) * 0.08 - 0.03
        u = torch.randn(r, m + m0, 1, generator=g) * 0.1
        p = (0.5 + b + u).clamp(0, 1)
        p[:, :m] = (p[:, :m] + shift).clamp(0, 1)
        bits = torch.rand(r, m + m0, K, generator=g) < p
        for i in range(r):
            yield bits[i, :m], bits[i, m:]


@pytest.fixture(scope="module")
def null_p_values():
    """(calibrated, binomial, welch) p-values of 2,000 null replicates, M = 400, M0 = 600."""
    out = [radioactivity_test(x, x0) for x, x0 in _simulate(2000, 400, 600, seed=1)]
    return (np.array([r.p_value for r in out]), np.array([r.p_value_binomial for r in out]),
            np.array([r.p_value_welch for r in out]))


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_calibrated_test_holds_its_fpr_where_the_binomial_does_not(null_p_values, alpha):
    p, p_bin, _ = null_p_values
    reps = len(p)
    bound = 1.5 * alpha + 3 * math.sqrt(1.5 * alpha * (1 - 1.5 * alpha) / reps)
    fpr, fpr_bin = (p <= alpha).mean(), (p_bin <= alpha).mean()
    print(f"alpha={alpha}: calibrated FPR {fpr:.4f} (bound {bound:.4f}), "
          f"binomial FPR {fpr_bin:.3f}")
    assert fpr <= bound
    assert fpr_bin >= 10 * alpha          # measured 0.49 / 0.64: calibration is what makes it valid


def test_welch_p_values_are_uniform_under_the_null(null_p_values):
    _, _, p_welch = null_p_values
    assert stats.kstest(p_welch, "uniform").pvalue > 1e-3


def test_power_at_a_small_shift():
    """+0.02 match probability per bit, M = M0 = 2,000, K = 32: flagged in >= 90 % of replicates."""
    flags = [radioactivity_test(x, x0, alpha=0.01).flagged
             for x, x0 in _simulate(200, 2000, 2000, shift=0.02, seed=2, chunk=50)]
    print(f"power {np.mean(flags):.3f}")
    assert np.mean(flags) >= 0.9


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
    assert res.z == pytest.approx(ref.statistic, rel=1e-10)
    assert res.p_value_welch == pytest.approx(ref.pvalue, rel=1e-8)
    total = int(k.sum())
    assert res.matched_total == total and res.n_samples == 300 and res.n_clean == 500
    assert res.p_value_binomial == pytest.approx(
        stats.binomtest(total, 300 * K, 0.5, alternative="greater").pvalue, rel=1e-8)
    assert res.p_value == max(res.p_value_welch, res.p_value_binomial)
    assert res.flagged == (res.p_value <= 0.05)
    assert res.bit_accuracy == pytest.approx(total / (300 * K))
    assert res.clean_bit_accuracy == pytest.approx(k0.sum() / (500 * K))


def test_uncalibrated_is_the_binomial_test():
    x = torch.zeros(10, 8, dtype=torch.bool)
    x[:, :5] = True                                             # 50 of 80 bits
    res = radioactivity_test(x.int())
    assert res.p_value == res.p_value_binomial == pytest.approx(
        stats.binomtest(50, 80, 0.5, alternative="greater").pvalue)
    assert res.z == pytest.approx((50 - 40) / math.sqrt(20))
    assert math.isnan(res.p_value_welch) and res.n_clean == 0 and "uncalibrated" in res.method
    assert set(res.as_dict()) == {"radio_" + f for f in RadioactivityResult.__dataclass_fields__}


def test_degenerate_and_invalid_inputs():
    ones, zeros = torch.ones(20, K, dtype=torch.bool), torch.zeros(20, K, dtype=torch.bool)
    assert radioactivity_test(ones, ones).p_value == 1.0        # no difference, no variance
    res = radioactivity_test(ones, zeros)
    assert res.p_value_welch == 0.0 and res.flagged and res.p_value == res.p_value_binomial
    assert not radioactivity_test(zeros, ones).flagged
    with pytest.raises(ValueError, match="K = 16"):
        radioactivity_test(ones, torch.ones(20, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="0/1"):
        radioactivity_test(torch.full((4, K), 2))
    with pytest.raises(ValueError, match=">= 2"):
        radioactivity_test(ones[:1], ones)
    with pytest.raises(ValueError, match="alpha"):
        radioactivity_test(ones, alpha=1.0)
