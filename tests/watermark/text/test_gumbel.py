"""Gumbel-max / EXP: distortion-freeness over keys (chi-square), the Gamma null, detection."""
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.stats import chisquare, gamma

from madmark.hydra_app import config_dir
from loops.models.text_lm import MultinomialChooser
from tests.watermark.text.bigram_lm import BigramLM
from watermark.text.tails import gamma_logsf
from watermark.text.windows import first_use_mask
from watermark.text import KGW, GumbelMax, GumbelMaxConfig, KGWConfig
from tests.watermark.text.conftest import KEY
from tests.watermark.text.test_kgw import null_scores


def draws(make, logits: torch.Tensor, keys: int = 50, per_key: int = 200):
    """Tokens chosen from the same ``logits`` (1, V) under ``keys`` keys, each in ``per_key``
    distinct contexts (h = 3): (keys · per_key,) tokens and whether each is green for KGW of its
    key (an independent seed per draw: the key, and the context within a key)."""
    v = logits.shape[1]
    ids = torch.randperm((v - 1) ** 3, generator=torch.Generator().manual_seed(0))[:per_key]
    digits = [ids // (v - 1) ** j % (v - 1) + 1 for j in range(3)]
    context = torch.stack([torch.zeros_like(ids)] + digits, 1)              # BOS, then 3 tokens
    tokens, green = [], []
    for i in range(keys):
        x = make(f"k{i}").choose(logits.expand(per_key, -1), context,
                                 torch.Generator().manual_seed(i))
        kgw = KGW(f"k{i}", v, KGWConfig(context_width=3))
        tokens.append(x)
        green.append(kgw.green_mask(context[:, 1:])[torch.arange(per_key), x])
    return torch.cat(tokens).numpy(), torch.cat(green).double().numpy()


def test_first_token_is_distributed_as_the_model_over_keys():
    """10,000 draws from one distribution p over 11 tokens, under 50 keys × 200 contexts (h = 3): EXP's
    tokens follow p (chi-square, scipy); KGW's are pulled toward its green lists (green rate
    0.5 instead of γ' = 3/12) and away from p."""
    v = 12
    logits = torch.randn(1, v, generator=torch.Generator().manual_seed(4))
    logits[:, 0] = float("-inf")                                              # BOS never drawn
    p = torch.softmax(logits.double(), dim=-1).numpy()[0, 1:]
    exp_tokens, exp_green = draws(lambda k: GumbelMax(k, v, GumbelMaxConfig(context_width=3)),
                                  logits)
    kgw_tokens, kgw_green = draws(lambda k: KGW(k, v, KGWConfig(context_width=3)), logits)
    n = len(exp_tokens)
    stat, pval = chisquare(np.bincount(exp_tokens, minlength=v)[1:], p * n)
    print(f"EXP tokens vs p: chi2 = {stat:.1f} (10 dof), p = {pval:.3f}")
    assert pval > 1e-3
    q = 3 / 12                                                                # γ' = round(γV) / V
    sd = math.sqrt(q * (1 - q) / n)
    print(f"green rate of the chosen token: KGW {kgw_green.mean():.3f}, EXP {exp_green.mean():.3f}")
    assert kgw_green.mean() > q + 20 * sd and abs(exp_green.mean() - q) < 4 * sd
    assert chisquare(np.bincount(kgw_tokens, minlength=v)[1:], p * n).pvalue < 1e-3


def test_choice_is_argmax_of_log_r_over_p_on_the_allowed_set():
    wm = GumbelMax(KEY, 50, GumbelMaxConfig(repeated_context="replay"))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 50, generator=g)
    logits[:, 0] = float("-inf")
    logits[:150, 10:] = float("-inf")                                        # a nucleus cut
    context = torch.cat([torch.zeros(300, 1, dtype=torch.long),
                         torch.randint(1, 50, (300, 3), generator=g)], dim=1)
    x = wm.choose(logits, context, None)
    assert x.min() >= 1 and (x[:150] < 10).all()
    r = wm.uniforms(context[:, -2:])                                          # h = 2
    p = torch.softmax(logits.double(), -1)
    assert torch.equal(x, (r ** (1 / p)).argmax(-1))                          # Aaronson's form
    assert torch.equal(wm.choose(logits, context, torch.Generator().manual_seed(5)), x)
    # the default: the keyed choice only where the context is new, else the ancestral draw
    # (the unmarked sampler's, from the same generator)
    sampled = GumbelMax(KEY, 50).choose(logits, context, torch.Generator().manual_seed(5))
    keyed = first_use_mask(context, 2, 50)
    ancestral = MultinomialChooser().choose(logits, context, torch.Generator().manual_seed(5))
    assert 0 < int(keyed.sum()) < 300
    assert torch.equal(sampled[keyed], x[keyed])
    assert torch.equal(sampled[~keyed], ancestral[~keyed])


def test_first_use_mask_marks_each_context_once_per_call():
    """h = 2, step 3 of a 3-row call (BOS = 0 first)."""
    # current windows (5, 6), (7, 8), (7, 8): the second (7, 8) is the lower row's -> not new
    context = torch.tensor([[0, 1, 5, 6], [0, 5, 7, 8], [0, 4, 7, 8]])
    assert first_use_mask(context, 2, 10).tolist() == [True, True, False]
    # row 0's (5, 6) was row 2's context at step 2 (it chose the 6 there) -> not new
    context = torch.tensor([[0, 2, 5, 6], [0, 5, 7, 8], [0, 5, 6, 9]])
    assert first_use_mask(context, 2, 10).tolist() == [False, True, True]
    # at the first step every row has the all-BOS context: only row 0 uses it
    assert first_use_mask(torch.zeros(4, 1, dtype=torch.long), 2, 10).tolist() == [
        True, False, False, False]


@pytest.mark.parametrize("width, vocab", [(2, 64), (3, 300)])             # table, sorted array
def test_the_step_by_step_history_equals_the_stateless_mask(width, vocab):
    """ContextHistory over the steps of a sampling call (and a second call after it) gives the
    mask that compares every earlier window of the context row by row."""
    from watermark.text.windows import ContextHistory

    history = ContextHistory(width, vocab)
    assert history._dense == (vocab ** width <= ContextHistory.DENSE_LIMIT)
    g = torch.Generator().manual_seed(width)
    for _ in range(2):                                                        # two calls
        ctx = torch.zeros(40, 1, dtype=torch.long)
        for _ in range(30):
            assert torch.equal(history.first_use(ctx), first_use_mask(ctx, width, vocab))
            nxt = torch.randint(1, 6, (40, 1), generator=g)                  # few tokens: repeats
            ctx = torch.cat([ctx, nxt], dim=1)


def test_a_set_of_documents_is_distributed_as_the_model_over_keys():
    """400 keys, one call of 5 three-token documents each (V = 6): the 2,000 documents follow the
    chain's exact law over the 125 possible ones (chi-square), as the documents of independent
    unmarked calls do. Replaying repeated contexts instead makes every call's 5 documents one
    text: each still has the model's law, but the counts come in fives (chi-square rejects) —
    the plain scheme is distortion-free per document, not per set of documents."""
    v, n, length = 6, 5, 3
    chain = BigramLM(v, scale=1.5, seed=3, seq_len=length)
    q = torch.softmax(chain.table.double(), -1)
    law = (q[0][1:, None, None] * q[1:, 1:][:, :, None] * q[1:, 1:][None, :, :]).flatten()
    digits = torch.tensor([(v - 1) ** 2, v - 1, 1])

    def counts(make):
        docs = torch.cat([chain.sample(n, generator=torch.Generator().manual_seed(k),
                                       chooser=make(f"key-{k}")) for k in range(400)])
        return np.bincount(((docs - 1) * digits).sum(1).numpy(), minlength=(v - 1) ** 3)

    expected = law.numpy() * 400 * n
    sampled = chisquare(counts(lambda k: GumbelMax(k, v)), expected).pvalue
    replayed = chisquare(counts(lambda k: GumbelMax(k, v, GumbelMaxConfig(
        repeated_context="replay"))), expected).pvalue
    print(f"chi-square p over the 125 documents: sample {sampled:.3f}, replay {replayed:.2e}")
    assert sampled > 1e-3 and replayed < 1e-6


def test_documents_of_one_call_differ_unless_contexts_replay(lm):
    for mode, distinct in (("sample", 64), ("replay", 1)):
        wm = GumbelMax(KEY, lm.vocab_size, GumbelMaxConfig(repeated_context=mode))
        x = lm.sample(64, generator=torch.Generator().manual_seed(0), chooser=wm)
        assert len(torch.unique(x, dim=0)) == distinct, mode


def test_unknown_repeated_context_setting_is_refused():
    with pytest.raises(ValueError, match="repeated_context='again'"):
        GumbelMaxConfig(repeated_context="again")


def test_false_positive_rate_and_gamma_null(unmarked):
    """10,000 unmarked documents, 100 keys: S / T windows is Gamma(T, 1) (the p-values are
    uniform) and the flag rate at α = 0.01 is at most α plus 3 binomial sd."""
    res = null_scores(lambda key: GumbelMax(key, 512), unmarked)
    n = len(unmarked)
    rate = res["flagged"].double().mean().item()
    print(f"EXP FPR at 0.01: {rate:.4f}")
    assert rate <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / n)
    p = res["p_value"].numpy()
    for a in (0.1, 0.5, 0.9):                                                 # uniform p-values
        assert abs((p <= a).mean() - a) < 4 * math.sqrt(a * (1 - a) / n)
    assert abs(res["z"].mean().item()) < 0.05 and abs(res["z"].std().item() - 1) < 0.05


def test_without_dedup_repetitive_unmarked_text_inflates_the_score():
    docs = torch.randint(1, 512, (4000, 4), generator=torch.Generator().manual_seed(5)).repeat(1, 8)
    wm = GumbelMax(KEY, 512)
    plain, dedup = wm.score(docs, dedup="none"), wm.score(docs)
    assert plain.z.std().item() > 2.5 and plain.flagged.double().mean().item() > 0.05
    assert dedup.flagged.double().mean().item() <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / 4000)


def test_marked_text_is_detected(lm):
    wm = GumbelMax(KEY, lm.vocab_size)
    x = lm.sample(64, generator=torch.Generator().manual_seed(0), chooser=wm)
    res = wm.score(x)
    tpr = res.p_value.lt(1e-5).double().mean().item()
    print(f"EXP TPR(p<1e-5) = {tpr:.3f}, median z = {res.z.median().item():.2f}, "
          f"median log10 p = {np.median(res.log_p.numpy()) / math.log(10):.1f}")
    assert tpr >= 0.98
    assert GumbelMax("another key", lm.vocab_size).score(x).p_value.lt(1e-5).sum() == 0


def test_repeated_contexts_replay_at_h1_not_at_h2(lm):
    """Replaying the keyed choice at a repeated context (the plain scheme) makes a bigram model's
    256-token documents cycles at h = 1 (few distinct windows survive de-duplication), not at
    h = 2; sampling at repeated contexts (the default) keeps them distinct even at h = 1."""
    kept = {}
    for h, mode in ((1, "replay"), (2, "replay"), (1, "sample")):
        wm = GumbelMax(KEY, lm.vocab_size, GumbelMaxConfig(context_width=h, repeated_context=mode))
        x = lm.sample(8, generator=torch.Generator().manual_seed(9), chooser=wm, length=256)
        kept[h, mode] = wm.score(x).num_scored.double().mean().item() / 256
    print(f"EXP distinct windows of 256-token documents: {kept}")
    assert kept[1, "replay"] < 0.5 and kept[2, "replay"] > 0.95 and kept[1, "sample"] > 0.95


def test_p_value_is_the_gamma_tail_in_log_space():
    wm = GumbelMax(KEY, 100)
    t = torch.tensor([10, 64, 64, 500])
    s = torch.tensor([10.0, 64.0, 200.0, 3000.0])
    res = wm._result(t, s)
    np.testing.assert_allclose(res.log_p[:3].numpy(), gamma.logsf(s.numpy(), t.numpy())[:3],
                               rtol=1e-10)
    np.testing.assert_allclose(res.p_value[:3].numpy(), gamma.sf(s.numpy(), t.numpy())[:3],
                               rtol=1e-8)
    assert res.p_value[2] < 1e-29 and res.log_p[3] < -1000 and np.isfinite(res.log_p.numpy()).all()


def test_gamma_tail_below_float64_range_matches_mpmath():
    """Where scipy's gamma.logsf underflows to -inf, the log-space sum is the exact tail."""
    mpmath = pytest.importorskip("mpmath")
    t = np.array([1, 10, 64, 500, 500, 5000])
    s = np.array([800.0, 900.0, 1500.0, 2000.0, 3000.0, 20000.0])
    got = gamma_logsf(s, t)
    for ti, si, gi in zip(t, s, got):
        ref = float(mpmath.log(mpmath.gammainc(int(ti), si, mpmath.inf, regularized=True)))
        assert gi == pytest.approx(ref, rel=1e-10), (ti, si)
    assert not np.isfinite(gamma.logsf(s, t)).any()                         # scipy alone: -inf


def test_key_is_never_shown(lm):
    secret = "hunter2-VERY-secret-key"
    wm = GumbelMax(secret, lm.vocab_size)
    for text in (repr(wm), str(wm), f"{wm}", repr(wm.config)):
        assert secret not in text and str(wm._seed) not in text


def test_yaml_repeats_the_config_defaults():
    cfg = OmegaConf.load(config_dir() / "watermark" / "exp.yaml")
    assert instantiate(cfg.text) == GumbelMaxConfig()


@pytest.mark.slow
@pytest.mark.parametrize("width", [1, 3, 4])
def test_marked_text_is_detected_at_wider_contexts(lm, width):
    wm = GumbelMax(KEY, lm.vocab_size, GumbelMaxConfig(context_width=width))
    x = lm.sample(100, generator=torch.Generator().manual_seed(width), chooser=wm, length=48)
    assert wm.score(x).p_value.lt(1e-5).double().mean().item() >= 0.98
