"""The interface of the text watermarks (KGW, Gumbel-max / EXP): a token chooser and a scorer.

    wm = KGW(key, vocab_size=V)                        # or GumbelMax(key, V)
    x = lm.sample(n, chooser=wm)                       # marks at generation time, in the logits
    res = wm.score(x)                                  # TextScore, one row per document
    res.p_value, res.flagged                           # (N,) float64, (N,) bool at wm.alpha
    wm.pooled(wm.score(corpus, dedup="corpus"))        # one test over a whole corpus

A method supplies three things: :meth:`TextWatermark.choose` (the
:class:`~loops.models.text_lm.TokenChooser` protocol), a per-window statistic (the value a scored
(context, token) window adds to its document's score) and the null distribution of a document's
score given its number T of scored windows. Everything else — variable lengths, contexts,
de-duplication (watermark/text/windows.py), summing per document, the flag — is shared here, so
the engine treats every text watermark alike.

The key is held as a :class:`~watermark.SecretKey` and never shown: ``repr`` names the key by its
fingerprint only, and the seed derived from it is private.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..keys import SecretKey
from .windows import Sequences, as_batch, contexts, scored_mask, valid_mask


@dataclass
class TextScore:
    """Per-document detection outcome; tensors are (N,) on the input's device.

    ``score`` is the method's statistic over the T scored windows: the green count G for KGW, the
    sum S of ``-log(1 - r)`` for EXP. ``z`` is the score standardised under H0 (the text does not
    depend on the key); ``p_value`` = exp(``log_p``), the one-sided tail probability of H0 (log
    kept for p below float64's range). A document with T = 0 has z = 0, p = 1."""
    num_scored: torch.Tensor     # int64, T: scored (de-duplicated) windows
    score: torch.Tensor          # float64, the method's statistic
    z: torch.Tensor              # float64
    p_value: torch.Tensor        # float64 in [0, 1]
    log_p: torch.Tensor          # float64 <= 0, natural log of p_value
    flagged: torch.Tensor        # bool, p_value <= alpha
    alpha: float                 # the false-positive rate the flag is set at


@dataclass
class TextWatermarkConfig:
    """The settings every text watermark shares."""
    context_width: int = 1       # h: the tokens before a position that seed its pseudo-randomness
    alpha: float = 0.01          # false-positive rate of the flag


class TextWatermark(ABC):
    """A keyed token chooser plus its detector over (N, L) token sequences of vocabulary V.

    Subclasses set :attr:`name`, call ``super().__init__(key, vocab_size, config)``, and implement
    :meth:`choose`, :meth:`window_values` and :meth:`null_test`."""

    name: str = "text_watermark"

    def __init__(self, key: SecretKey | str, vocab_size: int, config: TextWatermarkConfig):
        if int(vocab_size) < 3:
            raise ValueError(f"vocab_size must be at least 3 (BOS and two tokens), got {vocab_size}")
        if int(config.context_width) < 1:
            raise ValueError(f"context_width must be >= 1, got {config.context_width}")
        if not 0.0 < float(config.alpha) < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {config.alpha}")
        self.key = SecretKey.coerce(key)
        self.vocab_size = int(vocab_size)
        self.config = config
        self.context_width = int(config.context_width)
        self.alpha = float(config.alpha)
        self._seed = self.key.seed(f"text/{self.name}/context")

    # ---- generation ---------------------------------------------------------------------------
    @abstractmethod
    def choose(self, logits: torch.Tensor, context: torch.Tensor,
               generator: Optional[torch.Generator]) -> torch.Tensor:
        """The TokenChooser protocol: ``logits`` (B, V) float32 (``-inf`` outside the allowed
        set), ``context`` (B, T) int64 with ``context[:, 0] == BOS`` -> (B,) int64 token ids."""

    @property
    def chooser(self) -> "TextWatermark":
        """The object to pass as ``TextLM.sample(..., chooser=)``: the watermark itself."""
        return self

    def _check_logits(self, logits: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.vocab_size:
            raise ValueError(f"{self.name}: logits must be (B, {self.vocab_size}); got shape "
                             f"{tuple(logits.shape)} (a model of another vocabulary?)")

    # ---- detection ----------------------------------------------------------------------------
    @abstractmethod
    def window_values(self, ctx: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The statistic of each scored window: ``ctx`` (M, h), ``tokens`` (M,) int64 -> (M,)
        float64."""

    @abstractmethod
    def null_test(self, num_scored: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(z, log p) under H0 of documents with T = ``num_scored`` (≥ 1) and ``score``; float64."""

    def score(self, sequences: Sequences, lengths: Optional[torch.Tensor] = None,
              dedup: str = "document") -> TextScore:
        """Test each document for the watermark.

        ``sequences``: (N, L) int64 token ids in [0, vocab_size) (with ``lengths`` (N,) for a
        padded batch) or a list of 1-D tensors; each document's first context is BOS, as at
        generation. ``dedup``: "document" | "corpus" | "none" (watermark/text/windows.py)."""
        tokens, lengths = as_batch(sequences, lengths)
        given = tokens[valid_mask(tokens, lengths)]
        if given.numel() and (given.min() < 0 or given.max() >= self.vocab_size):
            raise ValueError(f"{self.name}: token ids must lie in [0, {self.vocab_size})")
        ctx = contexts(tokens, self.context_width)
        keep = scored_mask(tokens, lengths, ctx, self.vocab_size, dedup)
        doc = keep.nonzero()[:, 0]
        values = self.window_values(ctx[keep], tokens[keep])
        n = tokens.shape[0]
        num = torch.bincount(doc, minlength=n)
        total = torch.zeros(n, dtype=torch.float64, device=tokens.device).index_add_(0, doc, values)
        return self._result(num, total)

    def pooled(self, result: TextScore) -> TextScore:
        """One test over all the documents of ``result`` together (T and the score add up): with
        ``dedup="corpus"`` scores, the corpus-level test of radioactivity. (1,) tensors."""
        return self._result(result.num_scored.sum().view(1), result.score.sum().view(1))

    def _result(self, num: torch.Tensor, total: torch.Tensor) -> TextScore:
        t, s = num.cpu().numpy(), total.cpu().double().numpy()
        z, log_p = np.zeros(len(t)), np.zeros(len(t))
        some = t > 0
        if some.any():
            z[some], log_p[some] = self.null_test(t[some], s[some])
        log_p = np.minimum(log_p, 0.0)
        p = np.exp(log_p)
        dev = num.device

        def f64(a):
            return torch.as_tensor(a, dtype=torch.float64).to(dev)
        return TextScore(num_scored=num, score=total.double(), z=f64(z), p_value=f64(p),
                         log_p=f64(log_p), flagged=f64(p) <= self.alpha, alpha=self.alpha)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self.config).items())
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, " \
               f"{settings}, key={self.key!r})"

    __str__ = __repr__
