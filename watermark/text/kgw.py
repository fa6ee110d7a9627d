"""KGW green-list watermark (Kirchenbauer et al. 2023, "A Watermark for Large Language Models").

Marking. The green list of a context (the last h tokens before the position, BOS counting as a
token, watermark/text/windows.py) is a pseudo-random γ-fraction of the vocabulary seeded by the key
and the context; the chooser adds δ to the green logits (finite ones only: tokens cut by the
nucleus or BOS stay impossible) and samples from the softmax with the sampler's generator.

Green list ("exact", the original): the k = round(γV) tokens with the smallest keyed hashes
(watermark/text/hashing.py) of the context — a keyed random k-subset, found with ``kthvalue`` over
the (B, V) grid of hashes, no loop over rows or tokens. Under H0 (text independent of the key) a
scored token is green with probability γ' = k / V exactly (BOS, never emitted, is ranked like any
token, so γ' is the rate of the emitted ones too), and γ' is the rate the test uses. Two windows of
one context are hypergeometric (negatively correlated), windows of different contexts independent,
so the binomial null is exact or conservative. With h = 1 the green lists of all V contexts are
computed once (O(V²) hashes, ~4M for V = 2048, ~0.3 s on a CPU core) and kept as a (V, V) bool
table (up to V = 8192; above, a (V,) table of thresholds), so generation and detection then cost
a lookup; with h > 1 each chosen token costs its context's row of V hashes and a ``kthvalue``,
and detection one such row per distinct context of the batch. ``green_list="bernoulli"`` instead makes each
token green independently with probability γ (hash mapped to [0, 1) below γ): the same test with
γ' = γ exactly, O(1) per token at any h, but the green count of a context varies.

Detection. T = scored (de-duplicated) windows of a document, G = green ones, and the
one-proportion z = (G − γ'T) / sqrt(T γ'(1 − γ')) (always reported). The p-value is the exact
binomial tail p = P(Bin(T, γ') ≥ G) (``test="binomial"``, the default; watermark/text/tails.py) or
the paper's normal tail p = P(N(0, 1) ≥ z) (``test="z"``; ``norm.logsf``), both in log space, so p
far below 1e-5 is exact. The normal tail is anti-conservative for short documents, because
Bin(T, 1/4) is skewed right: flagging at p ≤ α has the exact level 0.0159 for α = 0.01 at T = 32
(0.0091 at T = 64), and 3.8e-5 / 4.4e-5 / 1.7e-5 for α = 1e-5 at T = 32 / 64 / 200 — hence the
binomial default. Under H0 over keys the binomial test's level is at most α (measured in
tests/watermark/text/test_kgw.py); under one fixed key, a low-entropy source's green rate is off
γ' by that key's luck on the source's frequent contexts (0.240 to 0.261 over three keys on a
V = 512, 4.4-nat chain), which is why a key is drawn at random and kept secret.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.stats import norm

from ..keys import SecretKey
from .base import TextWatermark, TextWatermarkConfig
from .hashing import context_seeds, pair_hashes, to_unit, token_hashes
from .tails import binom_logsf
from .windows import chooser_context

#: rows of V hashes computed at once when thresholds are needed for many contexts
_CHUNK_ELEMENTS = 1 << 22
#: h = 1: the green lists of all V contexts are kept as a (V, V) bool table when V² is at most
#: this (64 MiB; V ≤ 8192), else looked up through a (V,) table of thresholds
MASK_TABLE_ENTRIES = 1 << 26


@dataclass
class KGWConfig(TextWatermarkConfig):
    """KGW's settings (configs/watermark/kgw.yaml)."""
    gamma: float = 0.25          # γ: green fraction of the vocabulary
    delta: float = 2.0           # δ: logit bias added to green tokens
    green_list: str = "exact"    # exact: round(γV) green tokens per context | bernoulli: each w.p. γ
    test: str = "binomial"       # binomial: exact tail P(Bin(T, γ') >= G) | z: normal tail of z


class KGW(TextWatermark):
    """The green-list watermark; see the module docstring.

    Args:
        key: SecretKey or literal key string; seeds every green list.
        vocab_size: V, the number of token ids including BOS (the tokenizer's, fixed in a run).
        config: :class:`KGWConfig` (defaults when None).
    """

    name = "kgw"

    def __init__(self, key: SecretKey | str, vocab_size: int, config: Optional[KGWConfig] = None):
        config = config or KGWConfig()
        super().__init__(key, vocab_size, config)
        if not 0.0 < float(config.gamma) < 1.0:
            raise ValueError(f"gamma must lie in (0, 1), got {config.gamma}")
        if float(config.delta) < 0:
            raise ValueError(f"delta must be >= 0, got {config.delta}")
        if config.green_list not in ("exact", "bernoulli"):
            raise ValueError(f"green_list must be 'exact' or 'bernoulli', got {config.green_list!r}")
        if config.test not in ("z", "binomial"):
            raise ValueError(f"test must be 'z' or 'binomial', got {config.test!r}")
        self.gamma, self.delta = float(config.gamma), float(config.delta)
        self.exact = config.green_list == "exact"
        self.green_size = min(max(round(self.gamma * self.vocab_size), 1), self.vocab_size - 1)
        #: γ', the probability that a token is green under H0, used by the test
        self.null_rate = self.green_size / self.vocab_size if self.exact else self.gamma
        self._tables: dict[str, torch.Tensor] = {}      # device -> (V,) thresholds (h = 1)
        self._masks: dict[str, torch.Tensor] = {}       # device -> (V, V) green lists (h = 1)

    # ---- green lists --------------------------------------------------------------------------
    def _thresholds(self, seeds: torch.Tensor) -> torch.Tensor:
        """(U,) int64 seeds -> (U,) the k-th smallest token hash of each context (exact lists)."""
        out = torch.empty_like(seeds)
        rows = max(1, _CHUNK_ELEMENTS // self.vocab_size)
        for i in range(0, seeds.numel(), rows):
            grid = token_hashes(seeds[i:i + rows], self.vocab_size)
            out[i:i + rows] = torch.kthvalue(grid, self.green_size, dim=1).values
        return out

    def _context_thresholds(self, ctx: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Thresholds of contexts ``ctx`` (M, h) with ``seeds`` (M,) for detection: a lookup in
        the table of all V contexts when h = 1 (built on first use), else one row of hashes per
        distinct context."""
        if self.context_width == 1:
            dev = str(ctx.device)
            if dev not in self._tables:
                ids = torch.arange(self.vocab_size, device=ctx.device).unsqueeze(1)
                self._tables[dev] = self._thresholds(context_seeds(self._seed, ids))
            return self._tables[dev][ctx[:, 0]]
        distinct, inverse = torch.unique(seeds, return_inverse=True)
        return self._thresholds(distinct)[inverse]

    def hashed_mask(self, context: torch.Tensor) -> torch.Tensor:
        """Green lists of contexts ``context`` (B, h) computed from their (B, V) grid of hashes:
        (B, V) bool (the definition; :meth:`green_mask` may look them up instead)."""
        grid = token_hashes(context_seeds(self._seed, context), self.vocab_size)
        if not self.exact:
            return to_unit(grid) < self.gamma
        threshold = torch.kthvalue(grid, self.green_size, dim=1).values
        return grid <= threshold[:, None]

    def _mask_table(self, device: torch.device) -> Optional[torch.Tensor]:
        """(V, V) bool, row c = the green list of context (c,), when h = 1 and V² fits in
        :data:`MASK_TABLE_ENTRIES`; built on first use per device. None otherwise."""
        if self.context_width != 1 or self.vocab_size ** 2 > MASK_TABLE_ENTRIES:
            return None
        dev = str(device)
        if dev not in self._masks:
            rows = max(1, _CHUNK_ELEMENTS // self.vocab_size)
            ids = torch.arange(self.vocab_size, device=device).unsqueeze(1)
            self._masks[dev] = torch.cat([self.hashed_mask(ids[i:i + rows])
                                          for i in range(0, self.vocab_size, rows)])
        return self._masks[dev]

    def green_mask(self, context: torch.Tensor) -> torch.Tensor:
        """Green lists of contexts ``context`` (B, h) int64: (B, V) bool. With h = 1 a row of the
        (V, V) table (generation is then nearly free), else :meth:`hashed_mask`."""
        table = self._mask_table(context.device)
        return self.hashed_mask(context) if table is None else table[context[:, 0]]

    def is_green(self, ctx: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Whether each token is green in its context: ``ctx`` (M, h), ``tokens`` (M,) -> (M,)
        bool (the entries of :meth:`green_mask` without the (M, V) grid)."""
        cheap = not self.exact and str(ctx.device) not in self._masks     # Bernoulli: O(1) as is
        table = None if cheap else self._mask_table(ctx.device)
        if table is not None:
            return table[ctx[:, 0], tokens]
        seeds = context_seeds(self._seed, ctx)
        h = pair_hashes(seeds, tokens)
        if not self.exact:
            return to_unit(h) < self.gamma
        return h <= self._context_thresholds(ctx, seeds)

    # ---- TextWatermark --------------------------------------------------------------------------
    def choose(self, logits: torch.Tensor, context: torch.Tensor,
               generator: Optional[torch.Generator]) -> torch.Tensor:
        """Add δ to the finite green logits, then draw from the softmax with ``generator``."""
        self._check_logits(logits)
        ctx = chooser_context(context.to(logits.device), self.context_width)
        logits = logits.float()
        biased = torch.where(self.green_mask(ctx) & torch.isfinite(logits), logits + self.delta,
                             logits)
        probs = torch.softmax(biased, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    def window_values(self, ctx: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """1.0 for a green window, 0.0 otherwise: a document's score is its green count G."""
        return self.is_green(ctx, tokens).double()

    def null_test(self, num_scored: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g, t, q = score, num_scored.astype(np.float64), self.null_rate
        z = (g - q * t) / np.sqrt(t * q * (1 - q))
        if self.config.test == "binomial":
            return z, binom_logsf(np.rint(g), num_scored, q)
        return z, norm.logsf(z)
