"""The Kneser–Ney n-gram LM against a plain-Python reference of interpolated modified KN.

nltk's ``KneserNeyInterpolated`` is not used as the reference: it has one fixed discount (not
Chen & Goodman's three per order from count-of-counts) and its lowest order is the continuation
unigram itself, not interpolated with a uniform distribution (so unseen tokens get probability 0).
:func:`reference_kn` below follows the equations of loops/models/ngram.py's docstring literally,
with dicts and loops, sharing no code with the model."""
import itertools
import math
from collections import Counter, defaultdict

import pytest
import torch
from pydoc_data.topics import topics

from loops.errors import LoopError
from loops.models import NGramModel
from loops.models.text_lm import BOS, TextLM

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_kn(seqs: list[list[int]], order: int, vocab: int):
    """p(w | h) by the definition: BOS-padded counts, continuation counts below the top order,
    discounts D_j = j − (j+1) Y n_{j+1}/n_j (n_j ≥ 1, clipped to [0.1, j]), uniform p_0."""
    counts = {k: Counter() for k in range(1, order + 1)}
    for s in seqs:
        padded = [BOS] * (order - 1) + list(s)
        for t in range(len(s)):
            counts[order][tuple(padded[t:t + order])] += 1
    for k in range(order - 1, 0, -1):
        for gram in counts[k + 1]:
            counts[k][gram[1:]] += 1
    discounts, follow = {}, {}
    for k, c in counts.items():
        coc = Counter(c.values())
        n = [max(coc[j], 1) for j in (1, 2, 3, 4)]
        y = n[0] / (n[0] + 2 * n[1])
        discounts[k] = [min(max(j - (j + 1) * y * n[j] / n[j - 1], 0.1), j) for j in (1, 2, 3)]
        follow[k] = defaultdict(dict)
        for gram, value in c.items():
            follow[k][gram[:-1]][gram[-1]] = value

    def prob(w: int, h: tuple) -> float:
        k = len(h) + 1
        if k == 1 and not follow[1]:
            return 0.0
        lower = (0.0 if w == BOS else 1.0 / (vocab - 1)) if k == 1 else prob(w, h[1:])
        cont = follow[k].get(h)
        if not cont:
            return lower
        total = sum(cont.values())
        d = lambda c: discounts[k][min(c, 3) - 1]     # noqa: E731
        gamma = sum(d(c) for c in cont.values()) / total
        c = cont.get(w, 0)
        return (max(c - d(c), 0.0) / total if c else 0.0) + gamma * lower

    return prob, discounts


def markov_corpus(n=60, length=14, vocab=12, seed=0) -> torch.Tensor:
    """(n, length) int64 ids in [1, vocab) from a random sparse second-order Markov chain."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.rand(vocab, vocab, vocab, generator=g) ** 6
    trans[..., BOS] = 0
    x = torch.zeros(n, length + 2, dtype=torch.int64)
    x[:, :2] = torch.randint(1, vocab, (n, 2), generator=g)
    for t in range(2, length + 2):
        x[:, t] = torch.multinomial(trans[x[:, t - 2], x[:, t - 1]], 1, generator=g).squeeze(1)
    return x[:, 2:]


def contexts(order: int, vocab: int) -> list[tuple]:
    """Every (order − 1)-token context: BOS only as a prefix (the sequence start)."""
    out = []
    for n_bos in range(order):
        out += [(BOS,) * n_bos + rest
                for rest in itertools.product(range(1, vocab), repeat=order - 1 - n_bos)]
    return out


def text_pool(n=300, length=32) -> torch.Tensor:
    """Byte ids (+1) of Python's documentation, (n, length) int64: real text, V = 257."""
    data = "".join(topics[k] for k in sorted(topics)).encode("utf-8")[: n * length]
    return torch.tensor(list(data), dtype=torch.int64).view(n, length) + 1


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_probabilities_match_the_reference(order):
    vocab = 12
    x = markov_corpus(vocab=vocab)
    model = NGramModel(order=order, vocab_size=vocab)
    model.fit(x, torch.Generator().manual_seed(0))
    ref, ref_discounts = reference_kn(x.tolist(), order, vocab)
    assert torch.allclose(model.discounts, torch.tensor([ref_discounts[k] for k in
                                                         range(1, order + 1)], dtype=torch.float64))
    hs = contexts(order, vocab) if order > 1 else [()]
    ctx = torch.tensor([(BOS,) + h for h in hs])        # [BOS, BOS, a] ends in the context (BOS, a)
    got = model.next_probs(ctx)
    want = torch.tensor([[ref(w, h) for w in range(vocab)] for h in hs], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-15)
    assert torch.allclose(got.sum(1), torch.ones(len(hs), dtype=torch.float64), atol=1e-12)
    assert (got[:, BOS] == 0).all() and (got[:, 1:] > 0).all()
    ll = torch.tensor([sum(math.log(ref(w, tuple(([BOS] * (order - 1) + s)[t:t + order - 1])))
                           for t, w in enumerate(s)) for s in x[:8].tolist()],
                      dtype=torch.float64)
    assert torch.allclose(model.log_likelihood(x[:8]), ll, rtol=1e-12)


def test_the_discounts_are_the_count_of_count_estimates_on_real_text():
    model = NGramModel(order=3)
    model.fit(text_pool(1000, 32), torch.Generator())
    d = model.discounts
    assert ((d > 0.1) & (d < torch.tensor([1.0, 2.0, 3.0]))).all()   # not clipped
    assert (d[1:, 0] < d[1:, 1]).all() and (d[1:, 1] < d[1:, 2]).all()   # D1 < D2 < D3+


def test_an_unseen_context_backs_off_to_the_lower_order():
    vocab = 12
    x = markov_corpus(vocab=vocab)
    model = NGramModel(order=3, vocab_size=vocab)
    model.fit(x, torch.Generator())
    seen = set(map(tuple, model._padded_grams(x)[..., :2].reshape(-1, 2).tolist()))   # (a, b)
    unseen = [(a, b) for a in range(1, vocab) for b in range(1, vocab) if (a, b) not in seen]
    assert len(unseen) >= 3
    ref, _ = reference_kn(x.tolist(), 3, vocab)
    p = model.next_probs(torch.tensor([[BOS, a, b] for a, b in unseen]))
    lower = torch.tensor([[ref(w, (b,)) for w in range(vocab)] for _, b in unseen],
                         dtype=torch.float64)                  # p_2(w | b), continuation counts
    assert torch.allclose(p, lower, rtol=1e-12)
    bigram = NGramModel(order=2, vocab_size=vocab)             # raw bigram counts: not the same
    bigram.fit(x, torch.Generator())
    assert not torch.allclose(p, bigram.next_probs(torch.tensor([[BOS, b] for _, b in unseen])))


def test_log_likelihood_equals_the_sum_of_next_logits_and_contexts_are_padded():
    x = text_pool(64, 24)
    model = NGramModel(order=3)
    model.fit(x, torch.Generator())
    assert torch.allclose(model.log_likelihood(x), TextLM.log_likelihood(model, x), atol=1e-3)
    assert torch.equal(model.next_probs(torch.tensor([[BOS]])),
                       model.next_probs(torch.tensor([[BOS, BOS]])))
    assert torch.equal(model.next_probs(x[:4, :9]), model.next_probs(x[:4, 7:9]))
    logits = model.next_logits(torch.tensor([[BOS, 5, 6]]))
    assert logits.dtype == torch.float32 and logits[0, BOS] == float("-inf")


def test_state_dict_round_trips_through_weights_only_load(tmp_path):
    x = text_pool(64, 24)
    model = NGramModel(order=3, vocab_size=257)
    model.fit(x, torch.Generator())
    torch.save(model.state_dict(), tmp_path / "ngram.pt")
    other = NGramModel(order=2)
    other.load_state_dict(torch.load(tmp_path / "ngram.pt", weights_only=True))
    assert (other.order, other.vocab_size, other.seq_len) == (3, 257, 24)
    assert torch.equal(other.log_likelihood(x), model.log_likelihood(x))
    assert torch.equal(other.sample(5, generator=torch.Generator().manual_seed(1)),
                       model.sample(5, generator=torch.Generator().manual_seed(1)))


def distinct_2(samples: torch.Tensor) -> float:
    pairs = samples.unfold(1, 2, 1).reshape(-1, 2)
    return len(torch.unique(pairs, dim=0)) / len(pairs)


def test_sampling_is_seeded_never_bos_and_temperature_lowers_diversity():
    x = text_pool()
    model = NGramModel(order=3)
    model.fit(x, torch.Generator())
    a = model.sample(200, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, model.sample(200, generator=torch.Generator().manual_seed(3)))
    assert a.shape == (200, 32) and a.dtype == torch.int64 and int(a.min()) >= 1
    cold = model.sample(200, bias=0.5, generator=torch.Generator().manual_seed(3))
    assert distinct_2(cold) < 0.8 * distinct_2(a)
    assert model.log_likelihood(cold).mean() > model.log_likelihood(a).mean()


def test_bad_input_is_refused_in_one_line():
    model = NGramModel(order=3, vocab_size=50)
    with pytest.raises(LoopError, match="BOS = 0 is reserved"):
        model.fit(torch.tensor([[3, 0, 4]]), torch.Generator())
    with pytest.raises(LoopError, match="model.vocab_size"):
        model.fit(torch.tensor([[3, 50, 4]]), torch.Generator())
    with pytest.raises(LoopError, match="int64"):
        model.fit(torch.rand(4, 3), torch.Generator())
    with pytest.raises(LoopError, match=r"model.order <= 3"):
        NGramModel(order=4, vocab_size=65536).fit(torch.tensor([[1, 2]]), torch.Generator())
    with pytest.raises(LoopError, match="not fitted"):
        NGramModel().next_logits(torch.tensor([[BOS]]))


@pytest.mark.slow
def test_shakespeare_trigram_perplexity_and_speed():
    """BPE-2048 Shakespeare: held-out perplexity of a trigram on 3,000 and on all train windows,
    and the time to fit and to sample 3,000 sequences (printed; run with -s)."""
    import time

    from madmark.data import Shakespeare
    from madmark.data.text_corpus import shakespeare_path

    if not shakespeare_path().is_file():
        pytest.skip("run madmark fetch-corpus shakespeare")
    source = Shakespeare()
    splits = source.load()
    for n in (3000, len(splits.train)):
        model = NGramModel(order=3, vocab_size=source.tokenizer.vocab_size)
        t0 = time.perf_counter()
        model.fit(splits.train[:n], torch.Generator())
        fit_s = time.perf_counter() - t0
        ppl = math.exp(-float(model.log_likelihood(splits.reference).sum())
                       / splits.reference.numel())
        print(f"n={n}: held-out perplexity {ppl:.1f}, fit {fit_s:.2f} s")
        assert 20 < ppl < 200
    t0 = time.perf_counter()
    model.sample(3000, generator=torch.Generator().manual_seed(0))
    print(f"sample 3000 x 64: {time.perf_counter() - t0:.1f} s")
