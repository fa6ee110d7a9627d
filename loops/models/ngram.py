"""An interpolated modified Kneser–Ney n-gram language model (Chen & Goodman 1998, §3–4), in torch.

Convention: a sequence ``x`` (L tokens) is left-padded with ``order - 1`` BOS tokens, so every
position has a full context: token ``x_t`` is predicted from the last ``order - 1`` tokens of
``[BOS]*(order-1) + x_<t`` (position 0 from ``(BOS, …, BOS)``). :meth:`next_logits` pads a
shorter context the same way (so ``[BOS]`` = the start of a sequence) and uses only its last
``order - 1`` tokens.

Counts, for orders k = 1 … n (n = ``order``):

- order n: ``c_n(g)`` = occurrences of the n-gram g (ending at a real token) in the pool;
- order k < n: the continuation count ``c_k(g) = N1+(• g)``, the number of distinct tokens v
  for which the (k+1)-gram ``v g`` occurs (thanks to the padding every k-gram has one).

For a context h (k-1 tokens) with ``c_k(h•) = Σ_w c_k(h w) > 0``::

    p_k(w | h) = max(c_k(h w) − D_k(c_k(h w)), 0) / c_k(h•)  +  γ_k(h) · p_{k-1}(w | h')
    γ_k(h)     = (D_k1 N1(h•) + D_k2 N2(h•) + D_k3+ N3+(h•)) / c_k(h•)

with h' = h without its first token; an unseen context backs off fully, ``p_k(w | h) =
p_{k-1}(w | h')``. ``p_0`` is uniform over the ``V − 1`` non-BOS tokens, so BOS has probability 0
and every other token a positive one. The discounts of each order come from its count-of-counts
``n_j`` (the number of k-grams with ``c_k = j``): ``Y = n1 / (n1 + 2 n2)``,
``D_kj = j − (j+1) Y n_{j+1} / n_j`` (j = 1, 2, 3+); a zero ``n_j`` counts as 1 and each
``D_kj`` is clipped to [0.1, j] — reached only on tiny, degenerate pools.

Storage: each order's k-grams are packed into sorted int64 keys ``Σ_i g_i V^(k-1-i)`` (so the
continuations of one context are one contiguous range) and looked up with
``torch.searchsorted``. Packing needs ``V^order ≤ 2^63``: V = 65536 allows order 3, V = 2048
order 5, bytes (V = 257) order 7. No Python loop runs over samples or n-grams.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..errors import LoopError, check_int
from .base import ProgressFn, fit_column
from .text_lm import BOS, TextLM

#: each discount is clipped into [DISCOUNT_FLOOR, j] (D_j ≤ j keeps every discounted count ≥ 0)
DISCOUNT_FLOOR = 0.1


def kn_discounts(counts: torch.Tensor) -> torch.Tensor:
    """Modified-KN discounts (D1, D2, D3+) float64 (3,) from one order's counts (M,) int64."""
    n = [max(int((counts == j).sum()), 1) for j in (1, 2, 3, 4)]
    y = n[0] / (n[0] + 2 * n[1])
    d = [j - (j + 1) * y * n[j] / n[j - 1] for j in (1, 2, 3)]
    return torch.tensor([min(max(dj, DISCOUNT_FLOOR), j) for j, dj in zip((1, 2, 3), d)],
                        dtype=torch.float64)


def _lookup(sorted_keys: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(found (Q,) bool, index (Q,) int64 into ``sorted_keys``; valid where found)."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(queries, dtype=torch.bool), torch.zeros_like(queries)
    idx = torch.searchsorted(sorted_keys, queries).clamp_max(sorted_keys.numel() - 1)
    return sorted_keys[idx] == queries, idx


#: largest V² for which the bigram distributions are kept as one dense (V, V) float64 table
#: (V = 4096: 128 MiB)
DENSE_BIGRAM_MAX = 4096 ** 2


class _Order:
    """One order's tables: the k-grams (sorted keys), their discounted probabilities ``alpha``,
    and per context (sorted keys) its continuation range ``[start, start + length)`` and γ."""

    def __init__(self, keys: torch.Tensor, counts: torch.Tensor, vocab_size: int) -> None:
        self.keys, self.counts = keys, counts
        self.discounts = kn_discounts(counts)
        self.ctx_keys, self.ctx_len = torch.unique_consecutive(keys // vocab_size,
                                                               return_counts=True)
        self.ctx_start = torch.cumsum(self.ctx_len, 0) - self.ctx_len
        segment = torch.repeat_interleave(torch.arange(len(self.ctx_keys)), self.ctx_len)
        c = counts.double()
        denom = torch.zeros(len(self.ctx_keys), dtype=torch.float64).index_add_(0, segment, c)
        taken = self.discounts[counts.clamp_max(3) - 1]            # D(c) of every k-gram
        self.alpha = (c - taken) / denom[segment]                  # ≥ 0 since D_j ≤ j
        self.gamma = torch.zeros_like(denom).index_add_(0, segment, taken) / denom
        self.token = keys % vocab_size


class NGramModel(TextLM):
    """Interpolated modified Kneser–Ney n-gram LM of token sequences (N, L) int64.

    Args:
        order: n, the longest n-gram (context of n − 1 tokens).
        vocab_size: number of token ids, BOS included; None = 1 + the largest id of the pool
            each fit sees (set it to the tokenizer's size so the uniform base covers it all).
        top_p: top-p nucleus when sampling (None = full distribution).
    """

    fit_columns = (
        fit_column("ngrams", "distinct n-grams of the model's order in the pool", "count"),
        fit_column("train_perplexity", "perplexity of the pool under the fitted model, "
                   "exp(−mean log p per token)", "perplexity (per token)"),
    )

    def __init__(self, order: int = 3, vocab_size: Optional[int] = None,
                 top_p: Optional[float] = None) -> None:
        self.order = check_int("ngram", "order", order)
        self.vocab_setting = None if vocab_size is None else check_int("ngram", "vocab_size",
                                                                       vocab_size, low=2)
        if top_p is not None and not 0.0 < float(top_p) <= 1.0:
            raise LoopError(f"ngram top_p={top_p!r} is outside (0, 1]",
                            "set model.top_p to a value in (0, 1] or null")
        self.top_p = None if top_p is None else float(top_p)
        self._orders: list[_Order] = []
        self._unigram: Optional[torch.Tensor] = None     # (V,) float64, p_1
        self._bigram: Optional[torch.Tensor] = None      # (V, V) float64, p_2, or None
        self._bigram32: Optional[torch.Tensor] = None    # its float32 copy (made when needed)

    # ------------------------------------------------------------------ fit / state

    def _check_packing(self, vocab_size: int) -> None:
        if vocab_size ** self.order > 2 ** 63:
            most = int(math.floor(63 / math.log2(vocab_size)))
            raise LoopError(f"ngram order={self.order} with vocab_size={vocab_size} does not fit "
                            "n-gram keys in int64 (needs vocab_size^order ≤ 2^63)",
                            f"set model.order <= {most} or use a smaller vocabulary")

    def _pack(self, tokens: torch.Tensor) -> torch.Tensor:
        """Keys of the n-grams ``tokens`` (..., m) int64: Σ_i tokens_i V^(m-1-i); (...,)."""
        key = torch.zeros(tokens.shape[:-1], dtype=torch.int64, device=tokens.device)
        for i in range(tokens.shape[-1]):                          # m ≤ order − 1 steps
            key = key * self.vocab_size + tokens[..., i]
        return key

    def _padded_grams(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, order): the n-gram ending at each token of ``x`` (N, L), BOS-padded."""
        pad = torch.full((x.shape[0], self.order - 1), BOS, dtype=torch.int64, device=x.device)
        return torch.cat([pad, x], dim=1).unfold(1, self.order, 1)

    def _check_tokens(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if x.dim() != 2 or x.dtype != torch.int64 or x.shape[1] < 1:
            raise LoopError(f"ngram {what} needs (N, L) int64 token ids, got {tuple(x.shape)} "
                            f"{x.dtype}", "use a text data source (data=shakespeare)")
        if x.numel() and (int(x.min()) < 1 or (self.vocab_size and
                                               int(x.max()) >= self.vocab_size)):
            raise LoopError(f"ngram {what}: token ids must lie in [1, {self.vocab_size or '…'}) "
                            f"(BOS = {BOS} is reserved), got [{int(x.min())}, {int(x.max())}]",
                            "set model.vocab_size to the tokenizer's vocabulary size")
        return x.cpu()

    def fit(self, x: torch.Tensor, generator: torch.Generator,
            progress: Optional[ProgressFn] = None,
            labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """Count the pool's n-grams and build the tables (deterministic: ``generator`` unused).

        ``x``: (N, L) int64 token ids in [1, vocab_size); ``labels`` are ignored."""
        self.vocab_size = 0
        x = self._check_tokens(x, "fit")
        vocab_size = self.vocab_setting or int(x.max()) + 1
        self._check_packing(vocab_size)
        self.vocab_size, self.seq_len = vocab_size, int(x.shape[1])
        self._check_tokens(x, "fit")
        keys, counts = torch.unique(self._pack(self._padded_grams(x)).reshape(-1),
                                    return_counts=True)
        table = {self.order: (keys, counts)}
        for k in range(self.order - 1, 0, -1):             # continuation counts N1+(• g)
            table[k] = torch.unique(table[k + 1][0] % vocab_size ** k, return_counts=True)
        self._build(table)
        if progress is not None:
            progress(1, 1)
        ppl = math.exp(-float(self.log_likelihood(x).sum()) / x.numel())
        return {"ngrams": float(len(keys)), "train_perplexity": ppl}

    def _build(self, table: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._orders = [_Order(*table[k], self.vocab_size) for k in range(1, self.order + 1)]
        uniform = torch.full((self.vocab_size,), 1.0 / (self.vocab_size - 1), dtype=torch.float64)
        uniform[BOS] = 0.0
        one = self._orders[0]                                # one context: the empty one
        self._unigram = (uniform * one.gamma[0]).index_add_(0, one.token, one.alpha)
        self._bigram = self._bigram32 = None
        if self.order >= 2 and self.vocab_size ** 2 <= DENSE_BIGRAM_MAX:
            # p_2(· | c) for every context c, dense: a row gather replaces the largest scatter
            # (the bigram continuations) of every next_probs call; equal up to rounding
            every = torch.arange(self.vocab_size, dtype=torch.int64).unsqueeze(1)
            self._bigram = self._mix(every, 2, torch.float64, None)

    @property
    def discounts(self) -> torch.Tensor:
        """(order, 3) float64: (D1, D2, D3+) of orders 1 … n."""
        return torch.stack([o.discounts for o in self._orders])

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"order": torch.tensor(self.order), "vocab_size": torch.tensor(self.vocab_size),
                 "seq_len": torch.tensor(self.seq_len)}
        for k, o in enumerate(self._orders, start=1):
            state[f"keys_{k}"], state[f"counts_{k}"] = o.keys, o.counts
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.order = int(state["order"])
        self.vocab_size, self.seq_len = int(state["vocab_size"]), int(state["seq_len"])
        self._build({k: (state[f"keys_{k}"].long(), state[f"counts_{k}"].long())
                     for k in range(1, self.order + 1)})

    # ------------------------------------------------------------------ probabilities

    def _require_fitted(self) -> None:
        if self._unigram is None:
            raise LoopError("the ngram model is not fitted", "call fit (or load_state_dict) first")

    def next_probs(self, context: torch.Tensor, dtype: torch.dtype = torch.float64
                   ) -> torch.Tensor:
        """p(next token | context) (B, V) ``dtype`` for ``context`` (B, T) int64; rows sum to 1.

        Unrolled, ``p_n = Σ_k (Π_{j>k} γ_j) a_k + (Π_{j>1} γ_j) p_1`` (a_k: order k's discounted
        term, γ_j = 1 where order j's context is unseen): one dense (B, V) product plus, per
        order, a scatter of each row's continuation range."""
        self._require_fitted()
        n = self.order
        ctx = context.to(torch.int64).cpu()[:, -(n - 1):] if n > 1 else context[:, :0].cpu()
        if ctx.shape[1] < n - 1:
            pad = torch.full((len(ctx), n - 1 - ctx.shape[1]), BOS, dtype=torch.int64)
            ctx = torch.cat([pad, ctx], dim=1)
        return self._mix(ctx, n, dtype, self._bigram).to(context.device)

    def _mix(self, ctx: torch.Tensor, top: int, dtype: torch.dtype,
             bigram: Optional[torch.Tensor]) -> torch.Tensor:
        """p_top(next | ctx) (B, V) for contexts ``ctx`` (B, top − 1) int64 (CPU): orders
        ``top`` … 2 interpolated down to the unigram base, or, with the dense ``bigram``
        (V, V) table, orders ``top`` … 3 down to its rows."""
        n = ctx.shape[1] + 1
        weight = torch.ones(len(ctx), dtype=dtype)                 # Π_{j>k} γ_j, from k = n down
        scatters = []
        lowest = 3 if bigram is not None else 2
        for k in range(top, lowest - 1, -1):
            o = self._orders[k - 1]
            found, ci = _lookup(o.ctx_keys, self._pack(ctx[:, n - k:]))
            rows = found.nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            ci = ci[rows]
            length, start = o.ctx_len[ci], o.ctx_start[ci]
            first = torch.cumsum(length, 0) - length            # each row's offset in the flat run
            entry = (torch.arange(int(length.sum())) - torch.repeat_interleave(first, length)
                     + torch.repeat_interleave(start, length))
            row = torch.repeat_interleave(rows, length)
            scatters.append((row, o.token[entry], weight[row] * o.alpha[entry].to(dtype)))
            weight[rows] *= o.gamma[ci].to(dtype)
        if bigram is not None:
            if dtype == torch.float32:                # next_logits: gather float32 rows
                if self._bigram32 is None:
                    self._bigram32 = bigram.float()
                bigram = self._bigram32
            probs = bigram[ctx[:, -1]].to(dtype).mul_(weight.unsqueeze(1))
        else:
            probs = weight.unsqueeze(1) * self._unigram.to(dtype).unsqueeze(0)
        for row, token, value in scatters:
            probs.index_put_((row, token), value, accumulate=True)
        return probs

    def next_logits(self, context: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, V) float32 of the next token (BOS: −inf), computed in float32
        (:meth:`next_probs` gives them in float64)."""
        return self.next_probs(context, torch.float32).log_()

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """``sum_t log p(x_t | context_t)`` (N,) float64, every position at once."""
        self._require_fitted()
        device, x = x.device, self._check_tokens(x, "log_likelihood")
        n, (rows, length) = self.order, x.shape
        grams = self._padded_grams(x).reshape(-1, n)
        word = grams[:, -1]
        p = self._unigram[word]
        for k in range(2, n + 1):
            o = self._orders[k - 1]
            context = self._pack(grams[:, n - k:n - 1])
            seen_ctx, ci = _lookup(o.ctx_keys, context)
            seen_gram, gi = _lookup(o.keys, context * self.vocab_size + word)
            alpha = torch.where(seen_gram, o.alpha[gi], torch.zeros_like(p))
            p = torch.where(seen_ctx, o.gamma[ci] * p + alpha, p)
        return p.log().view(rows, length).sum(1).to(device)
