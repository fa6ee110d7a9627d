"""The text watermarks' robustness table: detection of marked documents after each attack of
``watermark.text.attacks.TEXT_ATTACK_GRID`` (deletion, substitution, truncation, copy-paste of
human text), and the same test on the human documents (the false-positive side).

    rows = text_attack_rows(wm, marked, human, vocab_size, alpha=0.01, seed=0)

``marked``: (N, L) int64 documents drawn with ``wm`` as the chooser; ``human``: (M, L) real
documents (the copy-paste source and the unmarked control). One row per (attack, strength), the
first ``none``: ``detect_rate`` (documents with p ≤ α), ``median_z``, ``median_log10p``,
``mean_tokens`` (kept after the attack), and ``human_flag_rate`` on the human documents.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from watermark.text import TextWatermark, attacks

__all__ = ["text_attack_rows", "attacked"]


def attacked(name: str, strength: Any, docs: torch.Tensor, human: torch.Tensor, vocab_size: int,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``docs`` (N, L) after attack ``name`` at ``strength``: (tokens (N, L'), lengths (N,))."""
    if name == "none":
        return docs, torch.full((len(docs),), docs.shape[1], dtype=torch.int64)
    if name == "delete":
        return attacks.delete(docs, strength, generator=generator)
    if name == "substitute":
        return attacks.substitute(docs, strength, vocab_size, generator=generator)
    if name == "truncate":
        return attacks.truncate(docs, fraction=strength)
    if name == "copy_paste":
        return attacks.copy_paste(docs, human, strength, generator=generator)
    raise ValueError(f"unknown text attack {name!r}")


def text_attack_rows(wm: TextWatermark, marked: torch.Tensor, human: torch.Tensor,
                     vocab_size: int, alpha: float = 0.01, seed: int = 0) -> list[dict]:
    """The robustness table of ``wm`` (module docstring); deterministic given ``seed``."""
    rows = []
    human_rate = float((wm.score(human).p_value <= alpha).double().mean())
    for i, (name, strength) in enumerate([("none", None), *attacks.TEXT_ATTACK_GRID]):
        g = torch.Generator(device=marked.device).manual_seed(seed * 1000 + i)
        tokens, lengths = attacked(name, strength, marked, human, vocab_size, g)
        res = wm.score(tokens, lengths)
        rows.append({"method": wm.name, "attack": name,
                     "strength": "" if strength is None else strength,
                     "n_docs": len(marked), "mean_tokens": float(lengths.double().mean()),
                     "detect_rate": float((res.p_value <= alpha).double().mean()),
                     "median_z": float(res.z.median()),
                     "median_log10p": float(res.log_p.median()) / math.log(10),
                     "alpha": alpha, "human_flag_rate": human_rate})
    return rows
