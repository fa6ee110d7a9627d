"""The per-generation text metrics of a run: perplexities, distinct-n and tail mass.

    metrics = TextMetrics(reference, train, vocab_size, reference_lm, n_eval=1000)
    row = metrics(t, samples, model)        # the engine's evaluator call; samples: S_t (N, L)

``ppl_real`` is Shumailov et al.'s measure (the real held-out text under model_t: it rises when
the model forgets the real distribution); ``ppl_ref`` scores S_t under a reference LM trained
once on the real train text (it falls when S_t collapses to what is likely, rises when S_t drifts
into text real language models find unlikely); distinct-n and tail mass are computed on S_t alone
against the real train text's n-gram tail (eval/text_metrics.py). Precision, recall, density and
coverage of text are :class:`madmark.metrics.GenerationMetrics` on sequence embeddings.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from eval.text_metrics import TailMass, distinct_n, perplexity
from madcore.columns import Column

_REF = "the reference split (held-out real text; the first n_text_eval sequences)"
_ST = "S_t (unmarked samples; the first n_text_eval sequences)"
#: distinct-n orders written as ``distinct_<n>``
DISTINCT_ORDERS = (1, 2, 3, 4)
#: the columns :class:`TextMetrics` writes, in order
COLUMNS = (
    Column("ppl_real", "perplexity of the real held-out text under model_t (Shumailov et al. "
           "2024): exp(−mean log-likelihood per token)", "perplexity (tokens)", _REF),
    Column("ppl_ref", "perplexity of S_t under the reference LM (column text_reference_lm, "
           "trained once on the real train split)", "perplexity (tokens)", _ST),
    *(Column(f"distinct_{n}", f"distinct {n}-grams ÷ {n}-grams of S_t (Li et al. 2016)",
             "fraction in [0, 1]", _ST) for n in DISTINCT_ORDERS),
    Column("tail_mass", "share of S_t's tokens that are in the real train text's tail: its "
           "rarest tokens making up text_tail_share of its tokens (real text ≈ text_tail_share)",
           "fraction in [0, 1]", _ST + " vs the real train split's token counts"),
    Column("tail_unseen", "share of S_t's bigrams that never occur in the real train text",
           "fraction in [0, 1]", _ST + " vs the real train split's bigrams"),
    Column("text_reference_lm", "the reference language model of ppl_ref", "text",
           "the run's config"),
    Column("text_tail_share", "share of the real train text's tokens its tail holds", "fraction",
           "the run's config"),
    Column("n_text_eval", "sequences of S_t and of the reference split the text metrics use",
           "count", "the run's config"),
)


class TextMetrics:
    """Evaluator ``metrics(t, samples, model) -> row`` for token sequences.

    Args:
        reference: (N_ref, L) int64 held-out real sequences (never trained on).
        train: (N_train, L) int64 real train sequences (the tail's counts).
        vocab_size: V of the token ids (BOS included).
        reference_lm: a fitted ``TextLM`` (trained once on the real train split) for ``ppl_ref``.
        n_eval: sequences of S_t and of the reference used (None: all).
        tail_share: the tail's share of the real train text's tokens.
        describe_lm: the reference LM's label for the ``text_reference_lm`` column.
    """

    def __init__(self, reference: torch.Tensor, train: torch.Tensor, vocab_size: int,
                 reference_lm: Any, n_eval: Optional[int] = 1000, tail_share: float = 0.1,
                 describe_lm: str = "reference LM"):
        self.n_eval = None if n_eval is None else int(n_eval)
        self.reference = reference[:self.n_eval]
        self.vocab_size, self.reference_lm = int(vocab_size), reference_lm
        self.tail = TailMass.fit(train, self.vocab_size, n=1, tail_share=tail_share)
        self.bigrams = TailMass.fit(train, self.vocab_size, n=2, tail_share=tail_share)
        self.describe_lm, self.tail_share = describe_lm, float(tail_share)

    def __call__(self, t: int, samples: torch.Tensor, model: Any = None) -> dict[str, Any]:
        s = samples[:self.n_eval]
        row: dict[str, Any] = {
            "ppl_real": perplexity(model.log_likelihood(self.reference.to(samples.device)),
                                   self.reference.numel()),
            "ppl_ref": perplexity(self.reference_lm.log_likelihood(s), s.numel()),
        }
        row.update({f"distinct_{n}": distinct_n(s, n, self.vocab_size) for n in DISTINCT_ORDERS})
        row.update({"tail_mass": self.tail(s), "tail_unseen": self.bigrams.unseen(s),
                    "text_reference_lm": self.describe_lm, "text_tail_share": self.tail_share,
                    "n_text_eval": len(s)})
        return row
