"""The interface of the loop's language models (text modality), and the sampler they share.

Text is token sequences ``(N, L)`` int64 from a tokenizer trained on the real train split. Token id
:data:`BOS` (0) is reserved: it starts every sequence's context and is never emitted, so a
sequence of length ``L`` holds ``L`` real tokens and its context at position ``t`` is
``[BOS, x_0, …, x_{t-1}]``.

A language model gives the next token's logits for a batch of contexts (:meth:`TextLM.next_logits`);
sampling is shared: the logits are divided by the temperature τ = λ (the sampling bias; λ = 1 is
ancestral sampling), optionally cut to the top-p nucleus, and a :class:`TokenChooser` picks the
token. The default chooser draws from the softmax; text watermarks (KGW, Gumbel-max) are choosers
too, which is how LLM watermarks work: at generation time, in the logits.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Callable, Optional, Protocol

import torch

from madcore.rng import categorical

from ..errors import check_bias
from .base import GenerativeModel

#: the reserved begin-of-sequence token id: context only, never sampled
BOS = 0


class TokenChooser(Protocol):
    """Picks the next token of each sequence from its (temperature-scaled, nucleus-cut) logits."""

    def choose(self, logits: torch.Tensor, context: torch.Tensor,
               generator: Optional[torch.Generator]) -> torch.Tensor:
        """``logits``: (B, V) float32, ``-inf`` outside the allowed set (BOS, top-p cut);
        ``context``: (B, T) int64, ``context[:, 0] == BOS``, the tokens before the one chosen.
        Returns (B,) int64 token ids, never BOS."""


class MultinomialChooser:
    """Ancestral sampling: a draw from softmax(logits) with ``generator``
    (:func:`madcore.rng.categorical`, one uniform per row per step). Tokens of probability 0
    (``-inf`` logits) are never drawn."""

    def choose(self, logits: torch.Tensor, context: torch.Tensor,
               generator: Optional[torch.Generator]) -> torch.Tensor:
        return categorical(logits, generator)


def nucleus_mask(logits: torch.Tensor, top_p: Optional[float]) -> torch.Tensor:
    """Set logits outside the top-p nucleus to ``-inf`` (Holtzman et al. 2020). (B, V) -> (B, V).

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``;
    ``None`` or ``1.0`` leaves the logits unchanged."""
    if top_p is None or top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cum = torch.softmax(sorted_logits.float(), dim=-1).cumsum(dim=-1)
    drop_sorted = (cum - torch.softmax(sorted_logits.float(), dim=-1)) >= top_p  # keeps the first
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class TextLM(GenerativeModel):
    """A language model of token sequences, retrained from scratch each generation.

    Subclasses implement :meth:`fit` (on ``(N, L)`` int64), :meth:`next_logits`, ``state_dict``
    and ``load_state_dict``, and set :attr:`vocab_size` and :attr:`seq_len` when fitted. They may
    override :meth:`log_likelihood` with a faster batched form, and :meth:`logits_stepper` with
    an incremental one (a key/value cache) that :meth:`sample` uses unchanged otherwise."""

    accepts = ("text",)

    #: number of token ids (including BOS); set by ``fit`` / ``load_state_dict``
    vocab_size: int = 0
    #: the sequence length L it was fitted on: ``sample`` draws sequences of this length
    seq_len: int = 0
    #: top-p nucleus for sampling (None = full distribution)
    top_p: Optional[float] = None

    @abstractmethod
    def next_logits(self, context: torch.Tensor) -> torch.Tensor:
        """Logits of the next token given ``context`` (B, T) int64 (``context[:, 0] == BOS``,
        1 ≤ T ≤ seq_len). Returns (B, vocab_size) float32 log-probabilities up to a constant
        per row."""

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Natural-log likelihood of each sequence, ``sum_t log p(x_t | BOS, x_<t)``.

        ``x``: (N, L) int64. Returns (N,) float64. Perplexity of a set = exp(-sum / (N·L))."""
        n, length = x.shape
        bos = torch.full((n, 1), BOS, dtype=x.dtype, device=x.device)
        ctx = torch.cat([bos, x], dim=1)
        total = torch.zeros(n, dtype=torch.float64, device=x.device)
        for t in range(length):
            logp = torch.log_softmax(self.next_logits(ctx[:, :t + 1]).double(), dim=-1)
            total += logp.gather(1, x[:, t:t + 1]).squeeze(1)
        return total

    def logits_stepper(self, n: int,
                       device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """Where :meth:`sample` takes each step's logits from, for one call drawing ``n``
        sequences whose context is on ``device``: a function called once per step, in order,
        with the context so far ``ctx`` (n, t) int64 (t = 1, 2, …; BOS first), returning
        (n, vocab_size) logits. This default is :meth:`next_logits` of the last ``seq_len``
        tokens (BOS kept first past ``seq_len``); a model with an incremental state (a key/value
        cache) overrides it to keep that state between the steps of one ``sample`` call."""

        def step(ctx: torch.Tensor) -> torch.Tensor:
            if ctx.shape[1] > self.seq_len:               # past seq_len: keep BOS first
                ctx = torch.cat([ctx[:, :1], ctx[:, ctx.shape[1] - self.seq_len + 1:]], dim=1)
            return self.next_logits(ctx)

        return step

    @torch.no_grad()
    def sample(self, n: int, bias: float = 1.0, generator: Optional[torch.Generator] = None,
               labels: Optional[torch.Tensor] = None, chooser: Optional[TokenChooser] = None,
               length: Optional[int] = None) -> torch.Tensor:
        """Draw ``n`` sequences of ``length`` (default :attr:`seq_len`) tokens; (n, length) int64.

        Temperature τ = λ = ``bias``; then the top-p cut; then ``chooser`` (default ancestral)
        picks each token. BOS is never emitted. ``labels`` are ignored (unconditional)."""
        bias = check_bias(bias)
        length = int(length or self.seq_len)
        chooser = chooser or MultinomialChooser()
        device = generator.device if generator is not None else torch.device("cpu")
        ctx = torch.full((int(n), 1), BOS, dtype=torch.int64, device=device)
        step_logits = self.logits_stepper(int(n), device)
        for _ in range(length):
            logits = step_logits(ctx).float() / bias
            logits[:, BOS] = float("-inf")
            logits = nucleus_mask(logits, self.top_p)
            token = chooser.choose(logits, ctx, generator)
            ctx = torch.cat([ctx, token.to(ctx.device).unsqueeze(1)], dim=1)
        return ctx[:, 1:]
