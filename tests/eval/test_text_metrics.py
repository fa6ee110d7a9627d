"""Text metrics against pure-Python references on the same token lists."""
import math
from collections import Counter

import pytest
import torch

from eval.text_metrics import TailMass, distinct_n, pack_ngrams, perplexity


def ngrams(rows, n):
    return [tuple(r[i:i + n]) for r in rows for i in range(len(r) - n + 1)]


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(0)
    # a skewed vocabulary: Zipf-like token frequencies, so the tail is a real minority
    probs = 1.0 / torch.arange(1, 51, dtype=torch.float64)
    return torch.multinomial(probs / probs.sum(), 40 * 30, replacement=True, generator=g
                             ).view(40, 30) + 1


def test_pack_ngrams_is_injective_and_row_local(tokens):
    packed = pack_ngrams(tokens, 3, 51)
    assert packed.shape == (40, 28)
    rows = tokens.tolist()
    ref = {tuple(r[i:i + 3]) for r in rows for i in range(28)}
    assert len(torch.unique(packed)) == len(ref)
    assert packed[0, 0] == (tokens[0, 0] * 51 + tokens[0, 1]) * 51 + tokens[0, 2]
    with pytest.raises(ValueError, match="int64"):
        pack_ngrams(tokens, 5, 2 ** 16)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_distinct_n_matches_the_set_count(tokens, n):
    grams = ngrams(tokens.tolist(), n)
    assert distinct_n(tokens, n, 51) == pytest.approx(len(set(grams)) / len(grams))
    assert math.isnan(distinct_n(tokens[:, :2], 3, 51))


def test_distinct_n_falls_on_repeated_sequences(tokens):
    repeated = tokens[:4].repeat(10, 1)
    assert distinct_n(repeated, 2, 51) < distinct_n(tokens, 2, 51) / 5


def test_tail_is_the_rarest_tenth_and_real_text_scores_its_share(tokens):
    tail = TailMass.fit(tokens, 51, n=1, tail_share=0.1)
    counts = Counter(tokens.flatten().tolist())
    # reference: rarest first, accumulate until >= 10 %, include ties with the last
    total, acc, cut = sum(counts.values()), 0, None
    for tok, c in sorted(counts.items(), key=lambda kv: kv[1]):
        acc += c
        if acc >= 0.1 * total:
            cut = c
            break
    ref_tail = {t for t, c in counts.items() if c <= cut}
    assert set(tail.tail.tolist()) == ref_tail
    share = sum(counts[t] for t in ref_tail) / total
    assert tail(tokens) == pytest.approx(share)
    assert 0.1 <= share < 0.3
    head = tokens[tokens <= 3].view(1, -1)               # only the most frequent tokens
    assert tail(head) == 0.0
    assert tail.unseen(tokens) == 0.0
    assert tail.unseen(torch.tensor([[0, 0, 1]])) == pytest.approx(2 / 3)   # id 0 never occurs


def test_bigram_tail_and_unseen_bigrams(tokens):
    tail = TailMass.fit(tokens, 51, n=2, tail_share=0.2)
    grams = Counter(ngrams(tokens.tolist(), 2))
    assert len(tail.tail) <= len(grams) and len(tail.seen) == len(grams)
    other = torch.flip(tokens, dims=[1])
    flipped = ngrams(other.tolist(), 2)
    assert tail.unseen(other) == pytest.approx(sum(g not in grams for g in flipped) / len(flipped))


def test_perplexity_closed_form():
    # a uniform model over 8 tokens: perplexity 8 whatever the text
    ll = torch.full((5,), 10 * math.log(1 / 8), dtype=torch.float64)
    assert perplexity(ll, 50) == pytest.approx(8.0)
    assert math.isnan(perplexity(ll[:0], 0))
