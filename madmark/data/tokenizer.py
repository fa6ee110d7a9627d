"""The tokenizers of the text modality: a byte-level BPE trained on the train split, or raw bytes.

Token id :data:`~loops.models.text_lm.BOS` = 0 is the begin-of-sequence token of both: a special
token that encoding never produces (not even from a literal ``"<bos>"`` in the text) and decoding
drops.

- ``kind="bpe"``: a byte-level BPE (GPT-2 style: the 256 byte symbols, then merges) trained with
  the ``tokenizers`` library on the given texts, at most ``vocab_size`` ids including BOS (a small
  corpus may give fewer merges). Training is deterministic.
- ``kind="bytes"``: id = byte value + 1 of the UTF-8 text; 257 ids. Needs no training.

:func:`load_or_train_tokenizer` caches a trained BPE like the LeNet cache::

    cache_dir/<16 hex>/tokenizer.json   # the tokenizers library's own file
    cache_dir/<16 hex>/meta.json        # key (corpus fingerprint, settings, version), train time

keyed by the sha256 of (the texts' fingerprint, kind, vocab_size, :data:`TOKENIZER_VERSION`);
both files are written atomically, the JSON last; an unreadable entry is retrained with a warning.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from madcore.errors import MadmarkError
from madcore.files import atomic_write_json, atomic_write_text, atomic_write_with

#: bump when training or encoding changes, so old cache entries are not reused
TOKENIZER_VERSION = "bytelevel-bpe-v1"
KINDS = ("bpe", "bytes")
BOS_TOKEN = "<bos>"
BOS_ID = 0              # == loops.models.text_lm.BOS (kept import-free of the loop package)
N_BYTES = 256


def _as_rows(ids) -> tuple[list[list[int]], bool]:
    """``ids`` ((L,) or (N, L) tensor/array/list) as a list of int lists, and whether it was 1-D."""
    arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    single = arr.ndim == 1
    return (arr[None] if single else arr).astype(np.int64).tolist(), single


class TextTokenizer:
    """Encode documents to int64 token ids and decode ids back to text.

    Attributes:
        kind: "bpe" or "bytes".
        vocab_size: number of ids, BOS included.
    """

    kind = "bytes"
    vocab_size = N_BYTES + 1

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text as an int64 (n_tokens,) array of ids in [1, vocab_size)."""
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int64) + 1
                for t in texts]

    def decode(self, ids) -> Union[str, list[str]]:
        """Text of ``ids`` ((L,) → str, (N, L) → list of N str); BOS is dropped, a broken UTF-8
        sequence becomes U+FFFD."""
        rows, single = _as_rows(ids)
        out = [bytes(i - 1 for i in row if 0 < i <= N_BYTES).decode("utf-8", errors="replace")
               for row in rows]
        return out[0] if single else out

    def to_str(self) -> str:
        return json.dumps({"kind": "bytes"})


class BPETokenizer(TextTokenizer):
    """A byte-level BPE of the ``tokenizers`` library with BOS as its special token 0."""

    kind = "bpe"

    def __init__(self, tokenizer) -> None:
        if tokenizer.token_to_id(BOS_TOKEN) != BOS_ID:
            raise ValueError(f"token {BOS_TOKEN!r} is not id {BOS_ID}")
        tokenizer.encode_special_tokens = True    # a literal "<bos>" in text is plain text
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = 2048) -> "BPETokenizer":
        """Train on ``texts``: at most ``vocab_size`` ids, BOS and the 256 byte symbols included."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=[BOS_TOKEN],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(list(texts), trainer)
        return cls(tok)

    @classmethod
    def from_str(cls, text: str) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = [np.asarray(e.ids, dtype=np.int64) for e in self._tok.encode_batch(list(texts))]
        if any((ids == BOS_ID).any() for ids in out):      # cannot happen: encode_special_tokens
            raise RuntimeError("the BPE tokenizer produced BOS from text")
        return out

    def decode(self, ids) -> Union[str, list[str]]:
        rows, single = _as_rows(ids)
        out = self._tok.decode_batch(rows, skip_special_tokens=True)
        return out[0] if single else out

    def to_str(self) -> str:
        return self._tok.to_str()


def corpus_fingerprint(texts: Sequence[str]) -> str:
    """Hex sha256 of the texts, in order (each length-prefixed, so boundaries count)."""
    digest = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def check_settings(kind: str, vocab_size: int) -> None:
    if kind not in KINDS:
        raise MadmarkError(f"data.tokenizer={kind!r} is not a tokenizer",
                           f"set data.tokenizer to one of {', '.join(KINDS)}")
    if kind == "bpe" and (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
                          or not N_BYTES + 1 <= vocab_size <= 65536):
        raise MadmarkError(f"data.vocab_size={vocab_size!r} is outside [257, 65536]",
                           "set data.vocab_size=2048 (BPE: 256 bytes + BOS + merges)")


def cache_key(texts_fingerprint: str, kind: str, vocab_size: int) -> dict:
    return {"corpus": texts_fingerprint, "kind": kind, "vocab_size": int(vocab_size),
            "version": TOKENIZER_VERSION}


def cache_entry_dir(cache_dir: Union[str, Path], key: dict) -> Path:
    blob = json.dumps(key, sort_keys=True).encode()
    return Path(cache_dir).expanduser() / hashlib.sha256(blob).hexdigest()[:16]


def _load_entry(entry: Path, key: dict) -> Optional[BPETokenizer]:
    meta_path, tok_path = entry / "meta.json", entry / "tokenizer.json"
    if not (meta_path.is_file() and tok_path.is_file()):
        return None
    try:
        if json.loads(meta_path.read_text()).get("key") != key:
            return None
        return BPETokenizer.from_str(tok_path.read_text())
    except Exception as e:     # a corrupt file: json, tokenizers' own parser or a missing BOS
        warnings.warn(f"tokenizer cache entry {entry} is unreadable ({e}); retraining",
                      stacklevel=3)
        return None


def load_or_train_tokenizer(texts: Sequence[str], kind: str = "bpe", vocab_size: int = 2048,
                            cache_dir: Optional[Union[str, Path]] = None
                            ) -> tuple[TextTokenizer, dict]:
    """The tokenizer of ``texts`` (the train documents): cached, or trained and cached.

    Returns (tokenizer, info): info has ``kind``, ``vocab_size`` (ids actually in the tokenizer),
    ``cached`` (loaded from the cache), ``train_time_s`` and ``cache_path`` (None without a
    cache_dir, and for ``kind="bytes"``, which is not trained)."""
    check_settings(kind, vocab_size)
    if kind == "bytes":
        tok = TextTokenizer()
        return tok, {"kind": kind, "vocab_size": tok.vocab_size, "cached": False,
                     "train_time_s": 0.0, "cache_path": None}
    key = cache_key(corpus_fingerprint(texts), kind, vocab_size)
    entry = cache_entry_dir(cache_dir, key) if cache_dir else None
    hit = _load_entry(entry, key) if entry else None
    if hit is not None:
        return hit, {"kind": kind, "vocab_size": hit.vocab_size, "cached": True,
                     "train_time_s": 0.0, "cache_path": str(entry)}
    t0 = time.perf_counter()
    tok = BPETokenizer.train(texts, vocab_size)
    seconds = time.perf_counter() - t0
    if entry is not None:
        atomic_write_text(entry / "tokenizer.json", tok.to_str())
        atomic_write_json(entry / "meta.json", {"key": key, "vocab_size": tok.vocab_size,
                                                "train_time_s": seconds})
    return tok, {"kind": kind, "vocab_size": tok.vocab_size, "cached": False,
                 "train_time_s": seconds, "cache_path": None if entry is None else str(entry)}


def encode_cached(tok: TextTokenizer, texts: Sequence[str],
                  entry: Optional[Union[str, Path]]) -> list[np.ndarray]:
    """``tok.encode(texts)``, kept in the tokenizer's cache entry (``entry``: the
    ``cache_path`` of :func:`load_or_train_tokenizer`; None = no cache) as one
    ``ids-<fingerprint of the texts>.npz`` (int32 ids and per-text lengths, loaded without
    pickle). BPE-encoding Shakespeare's 5 MB takes ~4 s; reading it back, a few milliseconds.
    An unreadable or inconsistent file is encoded again and rewritten."""
    if entry is None or not texts:
        return tok.encode(texts)
    path = Path(entry) / f"ids-{corpus_fingerprint(texts)[:24]}.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:
            ids, lengths = saved["ids"], saved["lengths"]
        if (len(lengths) == len(texts) and int(lengths.sum()) == len(ids)
                and (ids >= 1).all() and (ids < tok.vocab_size).all()):
            return [a.astype(np.int64) for a in np.split(ids, np.cumsum(lengths)[:-1])]
    except Exception:            # missing, truncated, not an npz (EOFError, UnpicklingError, ...)
        pass
    out = tok.encode(texts)
    lengths = np.array([len(a) for a in out], dtype=np.int64)
    ids = np.concatenate(out).astype(np.int32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, ids=ids, lengths=lengths)

    atomic_write_with(path, write)
    return out
