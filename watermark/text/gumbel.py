"""Gumbel-max / EXP watermark (Aaronson 2022; Kuditipudi et al. 2023, "Robust Distortion-free
Watermarks for Language Models"; Fernandez et al. 2023 for the de-duplicated test).

Marking. Each context (the last h tokens, BOS counting as a token) gets keyed uniforms r ∈ (0, 1)^V
(watermark/text/hashing.py); the chooser picks ``argmax_v log(r_v) / p_v`` = ``argmax_v r_v^(1/p_v)``
over p = softmax(logits), the sampler's temperature-scaled, nucleus-cut distribution (tokens with
p_v = 0 never win). For uniform r this is exactly a draw from p (the Gumbel-max trick with Gumbel
noise −log(−log r)), so over a random key the marked text is distributed as the model's: the mark
is distortion-free, token by token. The keyed choice is deterministic given (key, context, p):
a context seen again with the same distribution yields the same token. Used at every step (the
plain scheme, ``repeated_context="replay"``), that makes every document one sampling call draws
from BOS the same text — all of them start from the same context — and, when the model's
distribution depends on no more than those h tokens (a bigram model with h = 1, an n-gram model
with h ≥ n − 1), a document falls into a cycle: on a bigram chain of 5.7 nats per token
(V = 2048), 256-token documents keep 23 % distinct windows at h = 1, 100 % at h = 2.

Hence the default ``repeated_context="sample"`` (the "context code history" of Hu et al. 2023 and
Wu et al. 2023, DiPmark, kept across the whole call): a context whose uniforms were already used
in this call — at an earlier position of any document, or by a document above it at this step
(:func:`~watermark.text.windows.first_use_mask`) — gets the ancestral draw of the sampler's
generator instead. Every keyed uniform vector then decides at most one token, so the whole set of
documents, not only each one, is distributed as the model's over a random key
(tests/watermark/text/test_gumbel.py: chi-square over all 3-token documents), and the documents
of one call differ as unmarked ones do. The price: tokens at contexts the call already used carry
no mark (on a trigram of Shakespeare, 500 documents of 64 tokens at h = 2: median z 19 instead of
38 for one document replayed 500 times). h = 2 by default (KGW, which samples, keeps h = 1): a
wider window leaves more contexts new and costs robustness (an edit breaks h + 1 windows: median z
of 64-token documents after deleting 30 % of the tokens 23.6 / 17.6 / 7.5 at h = 1 / 2 / 4,
measured with the plain scheme). The fraction of windows that survive de-duplication
(``num_scored / length``) measures the repetition of marked text.

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

from madcore.rng import categorical

from ..keys import SecretKey
from .base import TextWatermark, TextWatermarkConfig
from .hashing import context_seeds, pair_hashes, to_unit, token_hashes
from .tails import gamma_logsf
from .windows import ContextHistory, chooser_context


#: what a context already used in one sampling call gets (GumbelMaxConfig.repeated_context)
REPEATED_CONTEXT = ("sample", "replay")


@dataclass
class GumbelMaxConfig(TextWatermarkConfig):
    """The EXP watermark's settings (configs/watermark/exp.yaml); the scheme has no strength
    to set. ``repeated_context``: what a context already used in this sampling call gets —
    ``"sample"`` (default): an ancestral draw from the sampler's generator; ``"replay"``: the
    keyed choice again (the plain scheme: every document of one call is the same text)."""
    context_width: int = 2
    repeated_context: str = "sample"

    def __post_init__(self) -> None:
        if self.repeated_context not in REPEATED_CONTEXT:
            raise ValueError(f"repeated_context={self.repeated_context!r} is not one of "
                             f"{', '.join(REPEATED_CONTEXT)}")


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
        self._history = ContextHistory(self.context_width, self.vocab_size)

    def uniforms(self, context: torch.Tensor) -> torch.Tensor:
        """The keyed uniforms of contexts ``context`` (B, h) int64: (B, V) float64 in (0, 1)."""
        return to_unit(token_hashes(context_seeds(self._seed, context), self.vocab_size))

    def choose(self, logits: torch.Tensor, context: torch.Tensor,
               generator: Optional[torch.Generator]) -> torch.Tensor:
        """``argmax_v log(r_v) / p_v`` with p = softmax(logits) (float64) at contexts used for
        the first time in this call; elsewhere (``repeated_context="sample"``) the ancestral
        draw. The generator is consumed as by unmarked sampling, one uniform per row, so a row
        left unmarked gets the token the unmarked sampler would have drawn there."""
        self._check_logits(logits)
        context = context.to(logits.device)
        ctx = chooser_context(context, self.context_width)
        if self.config.repeated_context == "replay":
            keyed = torch.ones(len(logits), dtype=torch.bool, device=logits.device)
            token = torch.empty(len(logits), dtype=torch.int64, device=logits.device)
        else:
            token = categorical(logits, generator)
            keyed = self._history.first_use(context)
        if keyed.any():
            p = torch.softmax(logits[keyed].double(), dim=-1)
            # log r < 0: p = 0 gives -inf
            token[keyed] = (self.uniforms(ctx[keyed]).log() / p).argmax(dim=-1)
        return token

    def window_values(self, ctx: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``-log(1 - r)`` of each window's token: Exp(1) under H0."""
        r = to_unit(pair_hashes(context_seeds(self._seed, ctx), tokens))
        return -torch.log1p(-r)

    def null_test(self, num_scored: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = num_scored.astype(np.float64)
        return (score - t) / np.sqrt(t), gamma_logsf(score, t)
