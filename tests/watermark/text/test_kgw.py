"""KGW green lists: the keyed hash, green-list properties, the null (FPR), detection, p-values,
de-duplication and the key's secrecy."""
import logging
import math
import pickle

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.stats import binom, norm

from loops.models.text_lm import BOS as LM_BOS
from madmark.hydra_app import config_dir
from watermark import SecretKey
from watermark.text import KGW, KGWConfig, unpad
from watermark.text.hashing import context_seeds, mix64, pair_hashes
from watermark.text.tails import binom_logsf
from watermark.text.windows import BOS, chooser_context, contexts, scored_mask
from tests.watermark.text.conftest import KEY

M64 = (1 << 64) - 1


def splitmix64_reference(x: int) -> int:
    """Vigna's splitmix64 finaliser on Python ints (unsigned 64-bit), the independent reference."""
    x &= M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def test_mix64_is_splitmix64_in_wrapping_int64():
    values = [0, 1, 2, 12345, 2**62 + 7, 2**63 - 1, -1, -2**63, -987654321]
    got = mix64(torch.tensor(values, dtype=torch.int64)).tolist()
    assert [g & M64 for g in got] == [splitmix64_reference(v) for v in values]
    assert splitmix64_reference(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF   # Vigna's first output


def test_bos_is_the_language_models():
    assert BOS == LM_BOS == 0


@pytest.mark.parametrize("green_list", ["exact", "bernoulli"])
def test_green_fraction_is_gamma_per_context(green_list):
    wm = KGW(KEY, 1024, KGWConfig(gamma=0.25, green_list=green_list))
    ctx = torch.randint(0, 1024, (400, 1), generator=torch.Generator().manual_seed(0))
    counts = wm.green_mask(ctx).sum(1)
    if green_list == "exact":
        assert (counts == 256).all()
    else:                                    # Binomial(1024, 0.25) per context: sd 13.9
        assert abs(counts.double().mean().item() - 256) < 4 * 13.9 / math.sqrt(400)
        assert counts.min() > 256 - 5 * 13.9 and counts.max() < 256 + 5 * 13.9
    assert not (wm.green_mask(ctx[:1]) == wm.green_mask(ctx[1:2])).all()   # contexts differ


@pytest.mark.parametrize("width", [1, 2, 3])
def test_green_list_is_a_function_of_key_and_context_only(width):
    ctx = torch.randint(0, 1000, (64, width), generator=torch.Generator().manual_seed(width))
    wm = KGW(KEY, 1000, KGWConfig(context_width=width))
    mask = wm.green_mask(ctx)
    assert torch.equal(KGW(SecretKey(KEY), 1000, KGWConfig(context_width=width)).green_mask(ctx),
                       mask)                                                 # deterministic
    alone = torch.cat([wm.green_mask(ctx[i:i + 1]) for i in (5, 17, 63)])
    assert torch.equal(alone, mask[[5, 17, 63]])                             # batch-independent
    shuffled = torch.randperm(64, generator=torch.Generator().manual_seed(9))
    assert torch.equal(wm.green_mask(ctx[shuffled]), mask[shuffled])
    other = KGW("another key", 1000, KGWConfig(context_width=width)).green_mask(ctx)
    overlap = (other & mask).sum(1).double().mean().item() / 250             # ~γ for independent lists
    assert abs(overlap - 0.25) < 0.03
    # the lookup tables (h = 1) hold the definition; detection's pointwise membership agrees
    assert torch.equal(wm.hashed_mask(ctx), mask)
    tokens = torch.randint(1, 1000, (64,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(wm.is_green(ctx, tokens), mask[torch.arange(64), tokens])
    if width == 1:                                   # and the (V,) threshold table, for large V
        seeds = context_seeds(wm._seed, ctx)
        pointwise = pair_hashes(seeds, tokens) <= wm._context_thresholds(ctx, seeds)
        assert torch.equal(pointwise, mask[torch.arange(64), tokens])


def test_chooser_and_detector_see_the_same_contexts():
    x = torch.randint(1, 50, (3, 9), generator=torch.Generator().manual_seed(0))
    for h in (1, 2, 4):
        ctx = contexts(x, h)                                                 # (3, 9, h)
        for t in range(9):
            prefix = torch.cat([torch.full((3, 1), BOS), x[:, :t]], dim=1)   # what sample passes
            assert torch.equal(chooser_context(prefix, h), ctx[:, t])


def test_choose_adds_delta_to_finite_green_logits_only():
    wm = KGW(KEY, 64, KGWConfig(delta=3.0))
    logits = torch.zeros(20000, 64)
    logits[:, 0] = float("-inf")
    logits[:, 40:] = float("-inf")                                           # a nucleus cut
    context = torch.full((20000, 1), BOS)
    x = wm.choose(logits, context, torch.Generator().manual_seed(0))
    assert x.min() >= 1 and x.max() < 40
    green = wm.green_mask(torch.full((1, 1), BOS))[0, 1:40]
    g = int(green.sum())
    expected = g * math.exp(3) / (g * math.exp(3) + 39 - g)                  # closed form
    observed = wm.green_mask(torch.full((1, 1), BOS))[0][x].double().mean().item()
    assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / 20000)


def null_scores(wm_of_key, docs: torch.Tensor, keys: int = 100):
    """Scores of ``docs`` under H0, the key independent of the text: block b of the documents
    is scored with key b (the level of a watermark test holds over keys; under one fixed key a
    low-entropy source's green rate is off γ by that key's luck on its frequent contexts)."""
    blocks = docs.chunk(keys)
    results = [wm_of_key(f"null-key-{b}").score(block) for b, block in enumerate(blocks)]
    return {f: torch.cat([getattr(r, f) for r in results])
            for f in ("num_scored", "z", "p_value", "flagged")}


def test_false_positive_rate_on_unmarked_text_is_at_most_alpha(unmarked):
    """10,000 unmarked 32-token documents of a non-uniform Markov chain (V = 512, 4.4 nats per
    token), 100 keys: the binomial test's flag rate at α = 0.01 is at most α plus 3 binomial sd;
    the z-test's is its exact level, the binomial tail of its threshold (above α at T = 32)."""
    n = len(unmarked)
    margin = 3 * math.sqrt(0.01 * 0.99 / n)
    for green_list in ("exact", "bernoulli"):
        cfg = KGWConfig(green_list=green_list, alpha=0.01)
        res = null_scores(lambda key: KGW(key, 512, cfg), unmarked)
        flag_b = res["flagged"].double().mean().item()
        flag_z = (torch.from_numpy(norm.sf(res["z"].numpy())) <= 0.01).double().mean().item()
        print(f"KGW FPR at 0.01 ({green_list}): binomial {flag_b:.4f}, z {flag_z:.4f}")
        assert flag_b <= 0.01 + margin, green_list
        t = res["num_scored"].numpy()
        threshold = np.floor(t / 4 + norm.isf(0.01) * np.sqrt(t * 3 / 16)) + 1   # smallest G flagged
        level = binom.sf(threshold - 1, t, 0.25).mean()                          # ≈ 0.0159
        assert abs(flag_z - level) < 3 * math.sqrt(level * (1 - level) / n), green_list
        z = res["z"]
        assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05


def test_without_dedup_repetitive_unmarked_text_looks_marked():
    """A phrase of 4 tokens repeated 8 times: with every position scored, its few windows count
    8 times each and z spreads ~sqrt(8) times too wide; de-duplicated, the test holds its level."""
    g = torch.Generator().manual_seed(5)
    docs = torch.randint(1, 512, (4000, 4), generator=g).repeat(1, 8)        # (4000, 32)
    wm = KGW(KEY, 512)
    plain, dedup = wm.score(docs, dedup="none"), wm.score(docs)
    assert plain.z.std().item() > 2.5 and plain.flagged.double().mean().item() > 0.1
    assert dedup.num_scored.max().item() <= 5                                # 4 windows + 1 wrap
    assert dedup.flagged.double().mean().item() <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / 4000)


def test_marked_text_is_detected(lm, kgw_marked):
    """96 64-token documents sampled through TextLM.sample with the KGW chooser (δ = 2,
    γ = 0.25) on a chain of about 5.7 nats per token: p < 1e-5 for (nearly) all of them."""
    wm, x = kgw_marked
    res = wm.score(x)
    tpr = res.p_value.lt(1e-5).double().mean().item()
    print(f"KGW TPR(p<1e-5) = {tpr:.3f}, median z = {res.z.median().item():.2f}, "
          f"green fraction = {(res.score / res.num_scored).mean().item():.3f}")
    assert tpr >= 0.98 and res.z.median().item() > 7
    clean = wm.score(lm.chain_sample(1000, 64, torch.Generator().manual_seed(0)))
    assert clean.p_value.lt(1e-5).sum() == 0
    other = KGW("another key", lm.vocab_size).score(x)                       # the key matters
    assert other.p_value.lt(1e-5).sum() == 0


@pytest.mark.parametrize("width", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_marked_text_is_detected_with_wider_contexts(lm, width):
    wm = KGW(KEY, lm.vocab_size, KGWConfig(context_width=width))
    x = lm.sample(40, generator=torch.Generator().manual_seed(width), chooser=wm, length=48)
    assert wm.score(x).p_value.lt(1e-5).double().mean().item() >= 0.95


def test_p_values_match_scipy_far_in_the_tail():
    wm_z = KGW(KEY, 2048, KGWConfig(test="z"))
    wm_b = KGW(KEY, 2048)
    t = torch.tensor([64, 64, 200, 200, 1000])
    g = torch.tensor([16.0, 40.0, 120.0, 180.0, 600.0])
    rz, rb = wm_z._result(t, g), wm_b._result(t, g)
    q = 0.25
    z = (g.numpy() - q * t.numpy()) / np.sqrt(t.numpy() * q * (1 - q))
    np.testing.assert_allclose(rz.z.numpy(), z)
    np.testing.assert_allclose(rz.log_p.numpy(), norm.logsf(z), rtol=1e-10)
    sf = binom.sf(g.numpy() - 1, t.numpy(), q)
    np.testing.assert_allclose(rb.p_value.numpy(), sf, rtol=1e-8)
    assert rb.p_value[2] < 1e-20 and rb.log_p[4] < -200 and np.isfinite(rb.log_p.numpy()).all()
    assert rz.log_p[4].item() == pytest.approx(norm.logsf(z[4]), rel=1e-10)   # p ~ 1e-180


def test_binomial_tail_below_float64_range_matches_mpmath():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    t = np.array([1000, 2000, 5000, 5000])
    g = np.array([800, 1500, 4000, 5000])
    got = binom_logsf(g, t, 0.25)
    q = mpmath.mpf(1) / 4
    for ti, gi, li in zip(t, g, got):
        ref = mpmath.log(mpmath.fsum(mpmath.binomial(int(ti), k) * q ** k * (1 - q) ** (int(ti) - k)
                                     for k in range(int(gi), int(ti) + 1)))
        assert li == pytest.approx(float(ref), rel=1e-10), (ti, gi)
    assert not np.isfinite(binom.logsf(g - 1, t, 0.25)[1:]).any()           # scipy alone: -inf


def test_documents_of_other_lengths_and_the_list_form_agree():
    x = torch.randint(1, 300, (6, 40), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([40, 0, 1, 17, 39, 25])
    wm = KGW(KEY, 300)
    padded = wm.score(x, lengths)
    listed = wm.score(unpad(x, lengths))
    for field in ("num_scored", "score", "z", "p_value"):
        assert torch.equal(getattr(padded, field), getattr(listed, field)), field
    assert padded.num_scored[1] == 0 and padded.p_value[1] == 1 and not padded.flagged[1]
    for i in range(6):                                       # one document alone: the same
        alone = wm.score(x[i:i + 1, :lengths[i]])
        assert alone.score.item() == padded.score[i].item()


def test_corpus_dedup_scores_each_window_once_in_all_documents():
    x = torch.randint(1, 1000, (1, 50), generator=torch.Generator().manual_seed(0)).repeat(3, 1)
    wm = KGW(KEY, 1000)
    per_doc, corpus = wm.score(x), wm.score(x, dedup="corpus")
    assert per_doc.num_scored.tolist() == [50, 50, 50]
    assert corpus.num_scored.tolist() == [50, 0, 0]
    pooled = wm.pooled(corpus)
    assert pooled.num_scored.item() == 50 and pooled.z.item() == pytest.approx(per_doc.z[0].item())


def test_dedup_packing_and_its_exact_fallback_agree():
    """Ids that do not fit packed in 63 bits are de-duplicated by torch.unique(dim=0)."""
    x = torch.randint(1, 6, (30, 20), generator=torch.Generator().manual_seed(0))
    lengths = torch.randint(0, 21, (30,), generator=torch.Generator().manual_seed(1))
    for mode in ("document", "corpus"):
        for h in (1, 3):
            ctx = contexts(x, h)
            packed = scored_mask(x, lengths, ctx, 8, mode)
            fallback = scored_mask(x, lengths, ctx, 2**40, mode)            # 41 bits per id
            assert torch.equal(packed, fallback), (mode, h)
            brute = set()
            for i in range(30):                                               # the definition
                for t in range(int(lengths[i])):
                    item = (tuple(ctx[i, t].tolist()), int(x[i, t]))
                    brute.add((i, item) if mode == "document" else item)
            assert int(packed.sum()) == len(brute)


def test_key_is_never_shown(caplog, lm):
    secret = "hunter2-VERY-secret-key"
    wm = KGW(secret, lm.vocab_size)
    seed = str(SecretKey(secret).seed("text/kgw/context"))
    with caplog.at_level(logging.DEBUG):
        x = lm.sample(4, generator=torch.Generator().manual_seed(0), chooser=wm, length=8)
        res = wm.score(x)
        logging.getLogger("test").info("watermark %s result %s", wm, res)
    shown = [repr(wm), str(wm), f"{wm}", f"{wm!r}", repr(wm.config), repr(res), caplog.text]
    for text in shown:
        assert secret not in text and seed not in text
    assert SecretKey(secret).fingerprint in repr(wm)
    assert pickle.loads(pickle.dumps(wm)).green_mask(x[:, :1]).equal(wm.green_mask(x[:, :1]))


def test_yaml_repeats_the_config_defaults():
    cfg = OmegaConf.load(config_dir() / "watermark" / "kgw.yaml")
    assert instantiate(cfg.text) == KGWConfig()


def test_bad_settings_are_refused():
    for bad in (dict(gamma=0.0), dict(gamma=1.0), dict(delta=-1.0), dict(context_width=0),
                dict(alpha=0.0), dict(green_list="some"), dict(test="t")):
        with pytest.raises(ValueError):
            KGW(KEY, 100, KGWConfig(**bad))
    wm = KGW(KEY, 100)
    with pytest.raises(ValueError, match="logits"):
        wm.choose(torch.zeros(2, 99), torch.zeros(2, 1, dtype=torch.long), None)
    with pytest.raises(ValueError, match="token ids"):
        wm.score(torch.tensor([[1, 2, 100]]))
    with pytest.raises(ValueError, match="token ids"):
        wm.score(torch.tensor([[1, -3, 5, 5]]), dedup="corpus")
    wm.score(torch.tensor([[1, 2, 100]]), lengths=torch.tensor([2]))         # padding not read
    with pytest.raises(ValueError, match="dedup"):
        wm.score(torch.tensor([[1, 2]]), dedup="yes")
