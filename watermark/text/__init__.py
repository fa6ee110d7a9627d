"""Text watermarks for the language-model loop: marks chosen at generation time, in the logits.

    from watermark.text import KGW, GumbelMax, attacks
    wm = KGW(key, vocab_size=V)                   # KGWConfig(gamma=0.25, delta=2.0, context_width=1)
    x = lm.sample(n, chooser=wm)                  # (n, L) int64, marked
    wm.score(x).p_value                           # (n,) float64, one-sided
    tokens, lengths = attacks.delete(x, 0.1, generator=g)
    wm.score(tokens, lengths).flagged             # detection takes variable lengths

Modules: hashing (keyed int64 hashes), windows (variable-length batches, contexts,
de-duplication), base (TextWatermark, TextScore), kgw (green list), gumbel (Gumbel-max / EXP),
attacks (deletion, substitution, truncation, copy-paste).
"""
from . import attacks
from .base import TextScore, TextWatermark, TextWatermarkConfig
from .gumbel import GumbelMax, GumbelMaxConfig
from .kgw import KGW, KGWConfig
from .windows import DEDUP_MODES, as_batch, unpad

#: text watermarks by name (the ``name`` each reports)
TEXT_WATERMARKS = {"kgw": (KGW, KGWConfig), "exp": (GumbelMax, GumbelMaxConfig)}

__all__ = ["DEDUP_MODES", "GumbelMax", "GumbelMaxConfig", "KGW", "KGWConfig", "TEXT_WATERMARKS",
           "TextScore", "TextWatermark", "TextWatermarkConfig", "as_batch", "attacks", "unpad"]
