"""The shared text sampler: the ancestral chooser's law, the nucleus cut, BOS never drawn."""
import pytest
import torch
from scipy.stats import chisquare

from loops.models import text_lm
from loops.models.text_lm import MultinomialChooser, nucleus_mask


def test_inverse_cdf_draws_follow_the_softmax_and_never_a_zero_probability_token():
    logits = torch.randn(1, 40, generator=torch.Generator().manual_seed(0)) * 2
    logits[0, [0, 7, 39]] = float("-inf")
    draws = MultinomialChooser().choose(logits.expand(100_000, 40).contiguous(), None,
                                        torch.Generator().manual_seed(1))
    counts = torch.bincount(draws, minlength=40).double()
    p = torch.softmax(logits.double(), -1)[0]
    assert counts[[0, 7, 39]].sum() == 0
    keep = p > 0
    assert chisquare(counts[keep].numpy(), (p[keep] * 100_000).numpy()).pvalue > 1e-3


def test_a_uniform_rounding_up_to_the_total_takes_the_last_possible_token(monkeypatch):
    logits = torch.tensor([[float("-inf"), 0.0, 1.0, float("-inf")]])
    monkeypatch.setattr(text_lm.torch, "rand", lambda shape, **kw: torch.ones(shape))
    assert MultinomialChooser().choose(logits, None, None).tolist() == [2]


def test_seeded_draws_repeat():
    logits = torch.randn(50, 30, generator=torch.Generator().manual_seed(2))
    a = MultinomialChooser().choose(logits, None, torch.Generator().manual_seed(3))
    b = MultinomialChooser().choose(logits, None, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize("top_p, kept", [(0.5, 1), (0.7, 2), (0.81, 3), (1.0, 4)])
def test_nucleus_keeps_the_smallest_head_reaching_top_p(top_p, kept):
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    out = nucleus_mask(logits, top_p)
    assert int(torch.isfinite(out).sum()) == kept
    assert torch.isfinite(out[0, 1])                       # the most likely token always stays
