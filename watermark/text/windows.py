"""Token batches of variable length, their scored (context, token) windows, and de-duplication.

A batch of documents is a padded ``(N, L)`` int64 tensor with ``lengths`` (N,) int64: document i
holds ``tokens[i, :lengths[i]]``, the rest is padding (any value, ignored). A list of 1-D tensors is
accepted anywhere and padded with :func:`as_batch`; attacks that delete tokens return this form.

Position t of a document is scored with its context: the last h tokens of ``[BOS, x_0, ...,
x_{t-1}]``, left-padded with BOS when shorter (BOS counts as a token), which is what a
:class:`~loops.models.text_lm.TokenChooser` sees at generation time. One scored window is the
(h + 1)-tuple ``(context, token)``.

De-duplication (Sander et al. 2024, "Watermarking makes language models radioactive"): a repeated
window has the same pseudo-random value every time it occurs, so counting it again adds no
evidence and breaks the independence the tests assume (a repetitive unmarked text then looks
marked). Each window is scored once:

* ``"document"`` (default): once per document;
* ``"corpus"``: once in all the documents given (the first occurrence, in document order, is the
  one kept), for corpus-level tests such as radioactivity;
* ``"none"``: every position (only to show why de-duplication matters).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

#: the reserved begin-of-sequence id, the same as ``loops.models.text_lm.BOS`` (this package
#: imports nothing from loops: siblings do not import one another; a test checks they agree)
BOS = 0
#: the de-duplication modes of :func:`scored_mask`
DEDUP_MODES = ("document", "corpus", "none")

Sequences = Union[torch.Tensor, Sequence[torch.Tensor]]


def as_batch(sequences: Sequences, lengths: Optional[torch.Tensor] = None,
             pad: int = BOS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (N, L) int64, lengths (N,) int64)`` from an (N, L) tensor (all of length L unless
    ``lengths`` says otherwise) or a list of 1-D integer tensors (padded with ``pad``)."""
    if isinstance(sequences, torch.Tensor):
        if sequences.ndim != 2:
            raise ValueError(f"token sequences must be (N, L); got shape {tuple(sequences.shape)}")
        tokens = sequences.long()
        if lengths is None:
            lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.int64,
                                 device=tokens.device)
    else:
        seqs = [torch.as_tensor(s).long().flatten() for s in sequences]
        given = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
        device = seqs[0].device if seqs else torch.device("cpu")
        width = int(given.max()) if seqs else 0
        tokens = torch.full((len(seqs), width), pad, dtype=torch.int64, device=device)
        for i, s in enumerate(seqs):                  # one copy per document: the list form only
            tokens[i, :len(s)] = s
        lengths = given.to(device) if lengths is None else lengths
    lengths = torch.as_tensor(lengths, dtype=torch.int64, device=tokens.device)
    if lengths.shape != (tokens.shape[0],):
        raise ValueError(f"lengths must be ({tokens.shape[0]},); got shape {tuple(lengths.shape)}")
    if ((lengths < 0) | (lengths > tokens.shape[1])).any():
        raise ValueError(f"lengths must lie in [0, {tokens.shape[1]}]")
    return tokens, lengths


def unpad(tokens: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """The list form of a padded batch: ``[tokens[i, :lengths[i]]]``."""
    return [row[:n] for row, n in zip(tokens, lengths.tolist())]


def valid_mask(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, L) bool: the positions that hold a token (t < length)."""
    return torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]


def contexts(tokens: torch.Tensor, width: int) -> torch.Tensor:
    """The context of every position: (N, L) -> (N, L, h) int64, ``h = width`` ≥ 1.

    ``contexts[i, t] = last h of [BOS] * h + tokens[i, :t]``."""
    n, length = tokens.shape
    padded = torch.cat([tokens.new_full((n, width), BOS), tokens], dim=1)
    return padded.unfold(1, width, 1)[:, :length]


def chooser_context(context: torch.Tensor, width: int) -> torch.Tensor:
    """The last h tokens of a chooser's context (B, T) (``context[:, 0] == BOS``), left-padded
    with BOS: (B, h), the same windows as :func:`contexts` gives at detection."""
    body = context[:, 1:]
    pad = context.new_full((context.shape[0], width), BOS)
    return torch.cat([pad, body], dim=1)[:, -width:]


def first_use_mask(context: torch.Tensor, width: int, vocab_size: int) -> torch.Tensor:
    """(B,) bool: whether each row's current context (the last h tokens of a chooser's
    ``context`` (B, T), BOS first) is used for the first time in this sampling call: it is the
    context of no earlier position of any row, and no row above it has it at this step.

    A distortion-free scheme that spends each context's keyed randomness once per call keeps the
    whole set of documents distributed as the model's over keys. Stateless: the earlier contexts
    are read off ``context`` (O(B·T) per step, rows compared exactly); :class:`ContextHistory`
    gives the same mask step by step in O(B)."""
    earlier = contexts(context[:, 1:], width).reshape(-1, width)
    keys = _row_keys(torch.cat([earlier, chooser_context(context, width)]), vocab_size)
    current = keys[len(earlier):]
    return ~torch.isin(current, keys[:len(earlier)]) & _first_in_batch(current)


class ContextHistory:
    """The contexts one sampling call has used, kept between the steps of that call:
    ``first_use(context)`` equals :func:`first_use_mask` and, when ``context`` extends the one of
    the previous call by one token, costs O(B) (a table of every possible context when there are
    at most 2^24 of them, else a sorted array); any other ``context`` (a new sampling call)
    starts the history again from what that context holds."""

    DENSE_LIMIT = 1 << 24

    def __init__(self, width: int, vocab_size: int) -> None:
        self.width, self.vocab_size = int(width), int(vocab_size)
        self._base_v = self.vocab_size ** self.width < (1 << 62)    # exact base-V keys fit int64
        self._dense = self.vocab_size ** self.width <= self.DENSE_LIMIT
        self._last: Optional[torch.Tensor] = None
        self._current: Optional[torch.Tensor] = None
        self._seen: Optional[torch.Tensor] = None

    def _keys(self, windows: torch.Tensor) -> torch.Tensor:
        """(M, h) contexts -> (M,) int64, equal iff the contexts are (base V: the same in
        every call, so they index the table)."""
        key = torch.zeros(windows.shape[0], dtype=torch.int64, device=windows.device)
        for j in range(windows.shape[1]):
            key = key * self.vocab_size + windows[:, j]
        return key

    def _restart(self, context: torch.Tensor) -> None:
        earlier = self._keys(contexts(context[:, 1:], self.width).reshape(-1, self.width))
        if self._dense:
            self._seen = torch.zeros(self.vocab_size ** self.width, dtype=torch.bool,
                                     device=context.device)
            self._seen[earlier] = True
        else:
            self._seen = torch.unique(earlier)

    def _add(self, keys: torch.Tensor) -> None:
        if self._dense:
            self._seen[keys] = True
        else:
            self._seen = torch.unique(torch.cat([self._seen, keys]))

    def _contains(self, keys: torch.Tensor) -> torch.Tensor:
        if self._dense:
            return self._seen[keys]
        if not len(self._seen):
            return torch.zeros_like(keys, dtype=torch.bool)
        at = torch.searchsorted(self._seen, keys).clamp(max=len(self._seen) - 1)
        return self._seen[at] == keys

    def first_use(self, context: torch.Tensor) -> torch.Tensor:
        """(B,) bool for ``context`` (B, T) int64: see :func:`first_use_mask`."""
        b = context.shape[0]
        if not self._base_v:                       # too many contexts for int64 keys: stateless
            return first_use_mask(context, self.width, self.vocab_size)
        last = self._last
        continues = (last is not None and last.shape[0] == b
                     and context.shape[1] == last.shape[1] + 1 and last.device == context.device
                     and torch.equal(context[:, :-1], last))
        if continues:
            self._add(self._current)
        else:
            self._restart(context)
        current = self._keys(chooser_context(context, self.width))
        seen = self._contains(current)
        self._last, self._current = context.clone(), current
        return ~seen & _first_in_batch(current)


def _first_in_batch(keys: torch.Tensor) -> torch.Tensor:
    """(B,) bool: whether no row above has the same key."""
    distinct, inverse = torch.unique(keys, return_inverse=True)
    rows = torch.arange(len(keys), device=keys.device)
    first = torch.full((len(distinct),), len(keys), dtype=torch.int64, device=keys.device)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    return first[inverse] == rows


def _row_keys(rows: torch.Tensor, bound: int) -> torch.Tensor:
    """One int64 per row of (M, k) non-negative ids below ``bound``, equal iff the rows are equal:
    the ids packed in ``ceil(log2 bound)`` bits each when k of them fit in 63 bits, else the
    index of the row among the distinct rows (``torch.unique(dim=0)``, exact, slower)."""
    bits = max(1, (max(bound, 2) - 1).bit_length())
    if rows.shape[1] * bits <= 63:
        key = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
        for j in range(rows.shape[1]):
            key = (key << bits) | rows[:, j]
        return key
    return torch.unique(rows, dim=0, return_inverse=True)[1]


def scored_mask(tokens: torch.Tensor, lengths: torch.Tensor, ctx: torch.Tensor, vocab_size: int,
                dedup: str = "document") -> torch.Tensor:
    """(N, L) bool: the positions that are scored, each (context, token) window once per
    document, once in the corpus, or every time (``dedup``, see the module docstring).

    ``tokens`` (N, L), ``lengths`` (N,), ``ctx`` (N, L, h) from :func:`contexts`, ids in
    [0, vocab_size)."""
    if dedup not in DEDUP_MODES:
        raise ValueError(f"dedup must be one of {DEDUP_MODES}, got {dedup!r}")
    valid = valid_mask(tokens, lengths)
    if dedup == "none":
        return valid
    n, length = tokens.shape
    where = valid.flatten().nonzero().squeeze(1)               # doc-major order: first = earliest
    rows = torch.cat([ctx, tokens.unsqueeze(-1)], dim=-1).flatten(0, 1)[where]
    bound = vocab_size
    if dedup == "document":
        doc = (where // max(length, 1)).unsqueeze(1)
        rows, bound = torch.cat([doc, rows], dim=1), max(vocab_size, n)
    keys = _row_keys(rows, bound)
    _, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1 if inverse.numel() else 0,), where.numel(),
                       dtype=torch.int64, device=tokens.device)
    first.scatter_reduce_(0, inverse, torch.arange(where.numel(), device=tokens.device), "amin")
    keep = torch.zeros(n * length, dtype=torch.bool, device=tokens.device)
    keep[where[first]] = True
    return keep.view(n, length)
