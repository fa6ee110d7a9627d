"""Attacks on marked text: edits of token sequences that a detector must survive.

Every attack takes a batch — an (N, L) int64 tensor (with ``lengths`` (N,) for a padded batch) or a
list of 1-D tensors (watermark/text/windows.py) — and returns ``(tokens (N, L') int64, lengths (N,)
int64)``, a padded batch (padding is BOS), because deletions leave documents of different lengths;
``TextWatermark.score(tokens, lengths)`` takes that form directly. Random attacks draw from
``generator`` only (on the tokens' device), with no loop over documents or tokens.

    name         strength                what it does
    delete       rate in [0, 1]          removes exactly round(rate · n) uniformly chosen tokens of
                                         each document of n tokens (the rest close up)
    substitute   rate in [0, 1]          replaces exactly round(rate · n) uniformly chosen tokens by
                                         a uniform other token id in [1, V) (never BOS, never itself)
    truncate     fraction in (0, 1]      keeps the first ceil(fraction · n) tokens (or ``length=``)
    copy_paste   fraction in [0, 1]      overwrites round(fraction · n) tokens of each document with
                                         ``spans`` contiguous spans of real (human) text taken at
                                         random offsets of ``human``, one span per equal segment

:data:`TEXT_ATTACK_GRID` lists the (name, strength) pairs of the standard robustness table.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from .windows import BOS, Sequences, as_batch, valid_mask

#: the (name, strength) pairs of the text robustness table
TEXT_ATTACK_GRID: list[tuple[str, Any]] = [
    ("delete", 0.05), ("delete", 0.1), ("delete", 0.2), ("delete", 0.3),
    ("substitute", 0.05), ("substitute", 0.1), ("substitute", 0.2), ("substitute", 0.3),
    ("truncate", 0.75), ("truncate", 0.5), ("truncate", 0.25),
    ("copy_paste", 0.25), ("copy_paste", 0.5), ("copy_paste", 0.75),
]


def _check_rate(rate: float, name: str = "rate") -> float:
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {rate}")
    return float(rate)


def _counts(lengths: torch.Tensor, rate: float) -> torch.Tensor:
    """round(rate · n) per document, (N,) int64 (round half to even, as torch.round)."""
    return torch.round(lengths.double() * rate).long()


def _random_subset(tokens: torch.Tensor, lengths: torch.Tensor, counts: torch.Tensor,
                   generator: Optional[torch.Generator]) -> torch.Tensor:
    """(N, L) bool: ``counts[i]`` distinct uniform positions among document i's first
    ``lengths[i]`` (the ranks of uniform keys; padding ranks last)."""
    keys = torch.rand(tokens.shape, generator=generator, device=tokens.device, dtype=torch.float64)
    keys = keys.masked_fill(~valid_mask(tokens, lengths), 2.0)
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(tokens.shape[1], device=tokens.device).expand_as(order).contiguous())
    return rank < counts[:, None]


def _clear_padding(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return tokens.masked_fill(~valid_mask(tokens, lengths), BOS)


def delete(sequences: Sequences, rate: float, lengths: Optional[torch.Tensor] = None,
           generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove round(rate · n) uniform positions of each document; the others keep their order."""
    tokens, lengths = as_batch(sequences, lengths)
    gone = _random_subset(tokens, lengths, _counts(lengths, _check_rate(rate)), generator)
    keep = valid_mask(tokens, lengths) & ~gone
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)     # kept ones first
    new_lengths = keep.sum(1)
    return _clear_padding(tokens.gather(1, order), new_lengths), new_lengths


def substitute(sequences: Sequences, rate: float, vocab_size: int,
               lengths: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace round(rate · n) uniform positions of each document by a token drawn uniformly from
    [1, vocab_size) without the one it replaces (ids in the batch must lie in [1, vocab_size))."""
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be at least 3, got {vocab_size}")
    tokens, lengths = as_batch(sequences, lengths)
    hit = _random_subset(tokens, lengths, _counts(lengths, _check_rate(rate)), generator)
    new = torch.randint(1, vocab_size - 1, tokens.shape, generator=generator, device=tokens.device)
    new = new + (new >= tokens).long()                   # skip the original id
    return _clear_padding(torch.where(hit, new, tokens), lengths), lengths.clone()


def truncate(sequences: Sequences, fraction: Optional[float] = None, length: Optional[int] = None,
             lengths: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the first ceil(fraction · n) tokens of each document, or the first ``length``."""
    if (fraction is None) == (length is None):
        raise ValueError("truncate takes one of fraction= or length=")
    tokens, lengths = as_batch(sequences, lengths)
    if fraction is not None:
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
        new_lengths = torch.ceil(lengths.double() * float(fraction) - 1e-9).long()
    else:
        if int(length) < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        new_lengths = lengths.clamp(max=int(length))
    width = int(new_lengths.max()) if len(new_lengths) else 0
    return _clear_padding(tokens[:, :width], new_lengths), new_lengths


def copy_paste(sequences: Sequences, human: torch.Tensor, fraction: float, spans: int = 1,
               lengths: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix human text in: overwrite round(fraction · n) tokens of each n-token document with
    ``spans`` contiguous spans of ``human``.

    ``human``: real token ids, a 1-D stream or an (M, L_h) tensor read as one stream (row after
    row); it must hold at least the longest span. The document is cut into ``spans`` equal
    segments; span j (its share of the count) lies at a uniform offset inside segment j, and its
    text starts at a uniform offset of the stream. Lengths are unchanged."""
    fraction = _check_rate(fraction, "fraction")
    if int(spans) < 1:
        raise ValueError(f"spans must be >= 1, got {spans}")
    tokens, lengths = as_batch(sequences, lengths)
    stream = torch.as_tensor(human).long().flatten().to(tokens.device)
    counts = _counts(lengths, fraction)
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    out = tokens.clone()
    for j in range(int(spans)):                                   # a loop over spans only
        seg_start = (j * lengths) // spans
        seg_len = ((j + 1) * lengths) // spans - seg_start
        span = ((j + 1) * counts) // spans - (j * counts) // spans
        span = torch.minimum(span, seg_len)
        if len(span) and int(span.max()) > stream.numel():
            raise ValueError(f"human text holds {stream.numel()} tokens, fewer than a span "
                             f"({int(span.max())})")
        u = torch.rand((2, tokens.shape[0]), generator=generator, device=tokens.device,
                       dtype=torch.float64)
        start = seg_start + (u[0] * (seg_len - span + 1).double()).long().clamp(min=0)
        source = (u[1] * (stream.numel() - span + 1).double()).long()
        inside = (pos >= start[:, None]) & (pos < (start + span)[:, None])
        index = (source[:, None] + pos - start[:, None]).clamp(0, max(stream.numel() - 1, 0))
        out = torch.where(inside, stream[index], out)
    return _clear_padding(out, lengths), lengths.clone()
