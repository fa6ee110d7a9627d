"""Per-generation metrics of token sequences: distinct-n, tail mass and perplexity.

Sequences are ``(N, L)`` int64 token ids (no BOS; see ``loops.models.text_lm``). Everything is
batched: n-grams are packed into one int64 each (:func:`pack_ngrams`) and counted with
``torch.unique``, so a set of 10⁵ sequences costs a few sorts, not a Python loop.

- **distinct-n** (Li et al. 2016): distinct n-grams ÷ all n-grams of a set of sequences (n-grams
  inside a sequence only). Collapse to a few modes lowers it.
- **tail mass** (after Shumailov et al. 2024, who find that self-consuming models lose the tails of
  the real distribution): the real train text's rarest n-grams that together make ``tail_share``
  (default 10 %) of its n-gram occurrences form the *tail*; the tail mass of a set is the share of
  its n-grams that fall in the tail. Real text scores ≈ ``tail_share`` by construction (ties at
  the cut included); a model that forgets rare words scores less. n-grams never seen in the real
  text are reported apart (:attr:`TailMass.unseen`), not counted as tail.
- **perplexity**: exp(−Σ log p ÷ tokens) of a set under a language model
  (``TextLM.log_likelihood``): ``ppl_real`` is the real held-out text under model_t (Shumailov's
  measure), ``ppl_ref`` is S_t under a reference LM trained once on real text.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["pack_ngrams", "distinct_n", "TailMass", "perplexity"]


def pack_ngrams(x: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """All contiguous n-grams of each row of ``x`` (N, L) packed into int64, row-major:
    (N, L − n + 1), id = Σ_i x[t + i] · V^(n − 1 − i). Raises ValueError when V^n overflows int64."""
    if n < 1:
        raise ValueError(f"n-gram order {n} must be at least 1")
    if vocab_size < 1 or n * math.log2(max(vocab_size, 2)) >= 63:
        raise ValueError(f"{n}-grams of a {vocab_size}-token vocabulary do not fit in int64")
    if x.ndim != 2:
        raise ValueError(f"token sequences must be (N, L), got shape {tuple(x.shape)}")
    length = x.shape[1] - n + 1
    if length <= 0:
        return x.new_zeros((x.shape[0], 0))
    packed = x[:, :length].to(torch.int64)
    for i in range(1, n):
        packed = packed * vocab_size + x[:, i:i + length]
    return packed


def distinct_n(x: torch.Tensor, n: int, vocab_size: int) -> float:
    """Distinct n-grams ÷ n-grams of the set ``x`` (N, L) (NaN when no sequence has n tokens)."""
    grams = pack_ngrams(x, n, vocab_size).flatten()
    if grams.numel() == 0:
        return math.nan
    return torch.unique(grams).numel() / grams.numel()


@dataclass
class TailMass:
    """The tail of a real text's n-gram distribution, and the share of a set's n-grams in it.

    Attributes:
        n: n-gram order (1 = tokens).
        vocab_size: V of the token ids.
        tail: sorted int64 packed ids of the tail n-grams.
        seen: sorted int64 packed ids of every n-gram seen in the real text (for ``unseen``).
        tail_share: the share of the real text's n-gram occurrences the tail was cut at.
    """

    n: int
    vocab_size: int
    tail: torch.Tensor
    seen: torch.Tensor
    tail_share: float

    @classmethod
    def fit(cls, real: torch.Tensor, vocab_size: int, n: int = 1,
            tail_share: float = 0.1) -> "TailMass":
        """The tail of ``real`` (N, L): its least frequent n-grams that, rarest first, make up at
        least ``tail_share`` of all its n-gram occurrences (every n-gram tied with the last one
        included, so the cut does not depend on an arbitrary order)."""
        if not 0 < tail_share < 1:
            raise ValueError(f"tail_share={tail_share} is outside (0, 1)")
        grams = pack_ngrams(real, n, vocab_size).flatten()
        if grams.numel() == 0:
            raise ValueError(f"the real text has no {n}-grams")
        ids, counts = torch.unique(grams, return_counts=True)
        order = torch.argsort(counts, stable=True)                    # rarest first
        cum = counts[order].cumsum(0)
        cut = int(torch.searchsorted(cum, tail_share * grams.numel()))  # first reaching the share
        cut_count = counts[order][min(cut, len(order) - 1)]
        tail = ids[counts <= cut_count]
        return cls(n, vocab_size, torch.sort(tail).values, ids, float(tail_share))

    def _member(self, grams: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        if table.numel() == 0:
            return torch.zeros_like(grams, dtype=torch.bool)
        table = table.to(grams.device)
        pos = torch.searchsorted(table, grams).clamp(max=table.numel() - 1)
        return table[pos] == grams

    def __call__(self, x: torch.Tensor) -> float:
        """Share of the n-grams of ``x`` (N, L) in the tail (NaN without n-grams)."""
        grams = pack_ngrams(x, self.n, self.vocab_size).flatten()
        if grams.numel() == 0:
            return math.nan
        return float(self._member(grams, self.tail).double().mean())

    def unseen(self, x: torch.Tensor) -> float:
        """Share of the n-grams of ``x`` (N, L) that never occur in the real text."""
        grams = pack_ngrams(x, self.n, self.vocab_size).flatten()
        if grams.numel() == 0:
            return math.nan
        return float((~self._member(grams, self.seen)).double().mean())


def perplexity(log_likelihood: torch.Tensor, n_tokens: int) -> float:
    """exp(−Σ log-likelihood ÷ tokens): ``log_likelihood`` (N,) natural-log likelihoods of N
    sequences holding ``n_tokens`` tokens in all (NaN for none)."""
    if n_tokens <= 0:
        return math.nan
    return math.exp(-float(log_likelihood.double().sum()) / n_tokens)
