"""A stand-in language model for the text-watermark tests: a fixed random bigram chain.

``BigramLM(vocab_size, scale, seed)``: the next token's logits are row ``x_{t-1}`` of a fixed
Gaussian table (V, V) with standard deviation ``scale`` (BOS's row starts a sequence), so the text
is a non-uniform Markov chain whose per-token entropy falls as ``scale`` grows (about
log V - scale²/2 nats while that is well above 0). Nothing is learned: ``fit`` only records the
sequence length.
"""
from __future__ import annotations

import math

import torch

from loops.models.text_lm import BOS, TextLM


class BigramLM(TextLM):
    def __init__(self, vocab_size: int = 2048, scale: float = 2.0, seed: int = 0, seq_len: int = 64):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size, self.seq_len = int(vocab_size), int(seq_len)
        self.table = torch.randn(vocab_size, vocab_size, generator=g) * scale
        self.table[:, BOS] = float("-inf")                  # BOS is context only

    def fit(self, x, generator, progress=None, labels=None):
        self.seq_len = int(x.shape[1])
        return {}

    def next_logits(self, context: torch.Tensor) -> torch.Tensor:
        return self.table[context[:, -1]]

    def chain_sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """(n, length) unmarked text of the same chain by inverse-CDF steps (a search in the
        flattened row CDFs, much faster than the shared sampler for many rows; the same chain)."""
        v = self.vocab_size
        cdf = torch.softmax(self.table.double(), dim=-1).cumsum(-1).clamp(max=1.0)
        cdf[:, -1] = 1.0
        flat = (cdf + torch.arange(v, dtype=torch.float64)[:, None]).flatten()   # row r: (r, r+1]
        x = torch.full((n, length + 1), BOS, dtype=torch.int64)
        for t in range(length):
            u = torch.rand(n, generator=generator, dtype=torch.float64)
            hit = torch.searchsorted(flat, x[:, t].double() + u) - x[:, t] * v
            x[:, t + 1] = hit.clamp(1, v - 1)            # u = 0 exactly: not BOS
        return x[:, 1:]

    def entropy(self) -> float:
        """Mean per-token entropy of the chain's rows, nats (uniform over the previous token)."""
        logp = torch.log_softmax(self.table.double(), dim=-1)[1:]
        return float(-(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1).mean())

    def state_dict(self):
        return {"table": self.table}

    def load_state_dict(self, state):
        self.table = state["table"]
        self.vocab_size = self.table.shape[0]


def max_entropy(vocab_size: int) -> float:
    """log(V - 1) nats: the entropy of a uniform choice among the non-BOS tokens."""
    return math.log(vocab_size - 1)
