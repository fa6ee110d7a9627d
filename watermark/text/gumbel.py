"""Gumbel-max / EXP watermark (Aaronson 2022; Kuditipudi et al. 2023, "Robust Distortion-free
Watermarks for Language Models"; Fernandez et al. 2023 for the de-duplicated test).

Marking. Each context (the last h tokens, BOS counting as a token) gets keyed uniforms r ∈ (0, 1)^V
(watermark/text/hashing.py); the chooser picks ``argmax_v log(r_v) / p_v`` = ``argmax_v r_v^(1/p_v)``
over p = softmax(logits), the sampler's temperature-scaled, nucleus-cut distribution (tokens with
p_v = 0 never win). For uniform r this is exactly a draw from p (the Gumbel-max trick with Gumbel
noise −log(−log r)), so over a random key the marked text is distributed as the model's: the mark
is distortion-free, token by token. It is deterministic given (key, context, p): the sampler's
generator is not used, and a context seen again with the same distribution yields the same token.
When the model's distribution depends on no more than those h tokens (a bigram model with h = 1,
an n-gram model with h ≥ n − 1), a repeated context replays the same continuation and a document
falls into a cycle: on a bigram chain of 5.7 nats per token (V = 2048), 256-token documents keep
23 % distinct windows at h = 1, 100 % at h = 2 (tests/watermark/text/test_gumbel.py). Hence the
default h = 2 here (KGW, which samples, keeps h = 1); a wider window postpones the cycles and
costs robustness (an edit breaks h + 1 windows: median z of 64-token documents after deleting
30 % of the tokens 23.6 / 17.6 / 7.5 at h = 1 / 2 / 4). The fraction of windows that survive
de-duplication (``num_scored / length``) measures the repetition of marked text.

Detection. Each scored (de-duplicated) window adds ``−log(1 − r_{x_t})``; a marked token tends to
have r close to 1. Under H0 (text independent of the key) the terms are i.i.d. Exp(1) — windows of
distinct (context, token) have independent uniforms — so the document score S over T windows is
Gamma(T, 1): p = ``scipy.stats.gamma.sf(S, T)``, computed in log space (watermark/text/tails.py:
exact far below 1e-5, and below float64's range), and z = (S − T) / sqrt(T).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..keys import SecretKey
from .base import TextWatermark, TextWatermarkConfig
from .hashing import context_seeds, pair_hashes, to_unit, token_hashes
from .tails import gamma_logsf
from .windows import chooser_context


@dataclass
class GumbelMaxConfig(TextWatermarkConfig):
    """The EXP watermark's settings (configs/watermark/exp.yaml); the scheme has no strength
    to set. h = 2 by default: at h = 1 a bigram-like model replays repeated contexts (above)."""
    context_width: int = 2


class GumbelMax(TextWatermark):
    """The Gumbel-max (EXP) watermark; see the module docstring.

    Args:
        key: SecretKey or literal key string; seeds every context's uniforms.
        vocab_size: V, the number of token ids including BOS.
        config: :class:`GumbelMaxConfig` (defaults when None).
    """

    name = "exp"

    def __init__(self, key: SecretKey | str, vocab_size: int,
                 config: Optional[GumbelMaxConfig] = None):
        super().__init__(key, vocab_size, config or GumbelMaxConfig())

    def uniforms(self, context: torch.Tensor) -> torch.Tensor:
        """The keyed uniforms of contexts ``context`` (B, h) int64: (B, V) float64 in (0, 1)."""
        return to_unit(token_hashes(context_seeds(self._seed, context), self.vocab_size))

    def choose(self, logits: torch.Tensor, context: torch.Tensor,
               generator: Optional[torch.Generator]) -> torch.Tensor:
        """``argmax_v log(r_v) / p_v`` with p = softmax(logits) (float64); ``generator`` unused."""
        self._check_logits(logits)
        ctx = chooser_context(context.to(logits.device), self.context_width)
        p = torch.softmax(logits.double(), dim=-1)
        return (self.uniforms(ctx).log() / p).argmax(dim=-1)     # log r < 0: p = 0 gives -inf

    def window_values(self, ctx: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``-log(1 - r)`` of each window's token: Exp(1) under H0."""
        r = to_unit(pair_hashes(context_seeds(self._seed, ctx), tokens))
        return -torch.log1p(-r)

    def null_test(self, num_scored: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = num_scored.astype(np.float64)
        return (score - t) / np.sqrt(t), gamma_logsf(score, t)
