"""``text_lm``: sequence embeddings from a small GPT trained once on a text source's REAL TRAIN
split — the text modality's LeNet, for precision / recall / density / coverage, FID and KID of
token sequences ``(N, L)`` int64.

Features. For x = (x_0 … x_{L−1}) the network reads [BOS, x_0 … x_{L−2}] — exactly the input it
was trained on (BOS at position 0; the full x would put x_0 at position 0, where training never
saw a real token, and [BOS, x] would run past the positional table at L = seq_len). Let h_t
(t = 0 … L−1) be its final-layer hidden states (after the final LayerNorm, before the tied output
layer): h_t is what the model predicts x_t from. The feature (``pool="mean_fit"``, the default) is

    [ mean_t h_t ,  mean_t h_t ⊙ ê(x_t) · √d ]        (N, 2 · d_model) float32

with ê(v) the unit-normalised tied embedding of token v (the output layer's row of v): the first
half is the mean hidden state — what the text's contexts predict — and the second says how the
text's actual tokens fit those predictions (its sum over the d dimensions is the mean of
√d · logit(x_t) / ‖e(x_t)‖). ``pool="mean"`` keeps only the first half (N, d_model).

Why both: the mean hidden state alone is close to a bag of tokens. On a first-order Markov chain
(the fast tests) a well-fitted LM's h_t needs only x_{t−1}, so shuffling each sequence's tokens
leaves mean_t h_t nearly unchanged: precision of token-shuffled sequences against the real
manifold was 0.97 (and 0.56 for another chain over the same tokens) with ``mean``, 0.00 (0.00)
with ``mean_fit``, real-vs-real precision / recall 0.98 / 0.97 with either. Real text behaves
alike: on Shakespeare (the default LM below; 1,000 reference sequences of 64 tokens vs 1,000 train
ones, k = 5) real-vs-real precision / recall are 0.83 / 0.90 with ``mean_fit`` (0.91 / 0.92 with
``mean``), and the reference's own sequences token-shuffled score 0.001 / 0.001 (``mean``:
0.97 / 0.995, i.e. blind to word order).
Sequences may be shorter than the LM's seq_len (L ≥ 1); longer ones are an error.

Settings (:data:`DEFAULTS`: 2 layers, 4 heads, width 64, 600 AdamW steps of 32 sequences, lr 1e-3
with 60 warm-up steps; 0.24 M parameters at V = 2048, L = 64) were chosen by held-out perplexity
against training time on Shakespeare (BPE-2048, 64-token windows, 26,415 train sequences; the
first 1,000 reference sequences; one CPU thread on 2 cores shared with other jobs, so times vary
by 2x): 300 steps ppl 195 (68 s), 600 steps 135 (156 s; 274 s under heavier load; 141 on the
first 2,000, the number :meth:`TextLMExtractor.describe` shows), 1000 steps 101 (513 s). 600 steps
already separate real from shuffled text completely (above); a lower perplexity mostly buys a
better reference LM for ``ppl_ref`` (pass ``steps=1000`` there).
Extraction: about 1.4 s for 1,000 sequences of 64 tokens on one CPU thread.

The fitted LM (:attr:`TextLMExtractor.lm`, a :class:`loops.models.gpt.GPTModel`, or the first
return of :func:`load_or_train_text_lm`) is a reference language model trained once on the real
train split: the text run may use it as the reference LM of ``ppl_ref``
(:mod:`madmark.text_evaluation`) instead of an n-gram model.

Cache: ``cache_dir/<16 hex>/model.safetensors`` (the GPTModel state: weights and its
architecture; a ``model.pt`` of ``torch.save`` is read with ``weights_only=True`` in its place) and
``meta.json`` (the full key, held-out perplexity, training time), keyed by the
caller's key, the train split's fingerprint (:func:`madmark.metrics.fingerprint`), vocab size,
seq_len, the training settings and :data:`ARCH_VERSION`. Both files are written atomically, the
JSON last; an unreadable entry is retrained with a warning.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from eval.features.base import FeatureExtractor
from madcore.files import atomic_write_with

__all__ = ["TextLMExtractor", "POOLS", "load_or_train_text_lm", "train_text_lm",
           "build_text_lm_extractor", "text_lm_perplexity", "text_lm_entry_dir", "ARCH_VERSION",
           "DEFAULTS", "VAL_SEQUENCES"]

#: bump when the cached LM's network or training recipe changes (the pooling is not cached)
ARCH_VERSION = "text_lm-v1"
#: the training settings (all part of the cache key)
DEFAULTS: dict[str, Any] = {"n_layer": 2, "n_head": 4, "d_model": 64, "steps": 600,
                            "batch_size": 32, "lr": 1e-3, "warmup_steps": 60, "seed": 0}
#: held-out perplexity is measured on the first VAL_SEQUENCES sequences of ``val``
VAL_SEQUENCES = 2000


def _fingerprint(x: torch.Tensor) -> str:
    from madmark.metrics import fingerprint          # lazy: madmark.metrics imports this package
    return fingerprint(x)


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _settings(settings: dict) -> dict:
    unknown = sorted(set(settings) - set(DEFAULTS) - {"device", "num_threads"})
    if unknown:
        raise ValueError(f"text_lm: unknown settings {', '.join(unknown)}; it takes "
                         f"{', '.join(DEFAULTS)}, device, num_threads")
    return {k: settings.get(k, v) if settings.get(k) is not None else v
            for k, v in DEFAULTS.items()}


def _check_tokens(x: torch.Tensor, vocab_size: int, who: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{who}: expected token sequences (N, L) int64, got shape "
                         f"{tuple(x.shape)}, dtype {x.dtype}")
    if x.numel():
        low, high = (int(v) for v in torch.aminmax(x))
        if low < 1 or high >= vocab_size:
            raise ValueError(f"{who}: token ids span [{low}, {high}], outside [1, {vocab_size}) "
                             f"(0 is BOS; vocab_size={vocab_size})")
    return x.long()


def text_lm_perplexity(lm, x: torch.Tensor) -> float:
    """exp(−mean log-likelihood per token) of ``x`` (N, L) under ``lm`` (nan when x is empty)."""
    if x.numel() == 0:
        return float("nan")
    return float(torch.exp(-lm.log_likelihood(x).sum() / x.numel()))


def train_text_lm(train: torch.Tensor, vocab_size: int, val: Optional[torch.Tensor] = None,
                  device: Union[str, torch.device] = "cpu", num_threads: Optional[int] = None,
                  **settings):
    """Fit a :class:`~loops.models.gpt.GPTModel` on ``train`` (N, L) int64 ids in [1, vocab_size)
    — the REAL TRAIN split — with :data:`DEFAULTS` overridden by ``settings``.

    Returns (model, info): ``info`` has the settings, ``vocab_size``, ``seq_len``, ``loss`` (final
    training cross entropy, nats per token), ``train_time_s``, and ``val_perplexity`` on the first
    :data:`VAL_SEQUENCES` of ``val`` (None without val)."""
    from loops.models.gpt import GPTModel
    from madcore.rng import generator

    s = _settings(settings)
    train = _check_tokens(train, vocab_size, "text_lm train split")
    if len(train) == 0 or train.shape[1] == 0:
        raise ValueError(f"text_lm: the train split {tuple(train.shape)} holds no tokens")
    device = torch.device(device)
    lm = GPTModel(n_layer=s["n_layer"], n_head=s["n_head"], d_model=s["d_model"],
                  vocab_size=int(vocab_size), steps=s["steps"], batch_size=s["batch_size"],
                  lr=s["lr"], warmup_steps=s["warmup_steps"])
    threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        t0 = time.perf_counter()
        fit = lm.fit(train.to(device), generator(int(s["seed"]), 0, "text_lm", device))
        train_time = time.perf_counter() - t0
        ppl = None if val is None else text_lm_perplexity(
            lm, _check_tokens(val, vocab_size, "text_lm val split")[:VAL_SEQUENCES].to(device))
    finally:
        torch.set_num_threads(threads)
    info = {**s, "vocab_size": int(vocab_size), "seq_len": int(train.shape[1]),
            "loss": fit["xent"], "train_time_s": train_time, "val_perplexity": ppl,
            "n_val": None if val is None else min(len(val), VAL_SEQUENCES)}
    return lm, info


def _full_key(key: dict, train: torch.Tensor, vocab_size: int, settings: dict) -> dict:
    return _canonical({"key": key, "train": _fingerprint(train), "vocab_size": int(vocab_size),
                       "seq_len": int(train.shape[1]), "settings": _settings(settings),
                       "arch": ARCH_VERSION})


def text_lm_entry_dir(cache_dir: Union[str, Path], full_key: dict) -> Path:
    """``cache_dir/<first 16 hex of sha256(full key)>``."""
    blob = json.dumps(full_key, sort_keys=True).encode()
    return Path(cache_dir) / hashlib.sha256(blob).hexdigest()[:16]


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """safetensors for ``*.safetensors``, else ``torch.load(weights_only=True)``."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(str(path), map_location="cpu", weights_only=True)


def _load(entry: Path, full_key: dict, device):
    """The cached (model, meta), or None when absent, for another key, or unreadable."""
    from loops.models.gpt import GPTModel

    meta_path, weights_path = entry / "meta.json", entry / "model.safetensors"
    if not weights_path.is_file():
        weights_path = entry / "model.pt"            # a torch.save'd GPTModel state dict
    if not (meta_path.is_file() and weights_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("full_key") != full_key:
            return None
        s = full_key["settings"]
        lm = GPTModel(n_layer=s["n_layer"], n_head=s["n_head"], d_model=s["d_model"],
                      vocab_size=full_key["vocab_size"], steps=s["steps"],
                      batch_size=s["batch_size"], lr=s["lr"], warmup_steps=s["warmup_steps"])
        state = _read_state(weights_path)
        lm.load_state_dict({k: v.to(device) for k, v in state.items()})
        if (lm.vocab_size, lm.seq_len) != (full_key["vocab_size"], full_key["seq_len"]):
            raise ValueError(f"weights of vocab {lm.vocab_size}, seq_len {lm.seq_len}")
    except Exception as e:
        warnings.warn(f"text_lm cache entry {entry} is unreadable ({type(e).__name__}: {e}); "
                      "retraining", stacklevel=3)
        return None
    return lm, meta


def load_or_train_text_lm(cache_dir: Union[str, Path], key: dict, train: torch.Tensor,
                          vocab_size: int, val: Optional[torch.Tensor] = None, **settings):
    """The text LM cached for (``key``, ``train``, ``vocab_size``, settings), or train it with
    :func:`train_text_lm` and cache it.

    Args:
        cache_dir: root folder of the cache (created if missing).
        key: JSON-able dict naming the data, e.g. ``{"source": "shakespeare"}``; the train split's
            fingerprint, vocab_size, seq_len, the settings and ARCH_VERSION are added to it.
        train: (N, L) int64 REAL TRAIN sequences, ids in [1, vocab_size).
        vocab_size: V, token ids including BOS (the tokenizer's vocab size).
        val: held-out sequences for the reported perplexity (never trained on); a cached entry
            keeps the perplexity of the val split it was measured on and remeasures it for
            another one.
        **settings: :data:`DEFAULTS` overrides, plus ``device`` and ``num_threads`` (not keyed).

    Returns:
        (GPTModel on ``device``, info): info holds the training settings and results
        (see :func:`train_text_lm`) plus ``cached``, ``trained``, ``cache_path``.
    """
    if not isinstance(key, dict):
        raise TypeError(f"text_lm cache: key must be a dict, got {type(key).__name__}")
    train = _check_tokens(train, vocab_size, "text_lm train split")
    device = torch.device(settings.get("device") or "cpu")
    full_key = _full_key(key, train, vocab_size, settings)
    entry = text_lm_entry_dir(cache_dir, full_key)
    val_fp = None if val is None else _fingerprint(torch.as_tensor(val)[:VAL_SEQUENCES])
    hit = _load(entry, full_key, device)
    if hit is not None:
        lm, meta = hit
        info = dict(meta["info"])
        if val is None:
            info["val_perplexity"], info["n_val"] = None, None
        elif meta.get("val") != val_fp:
            v = _check_tokens(val, vocab_size, "text_lm val split")[:VAL_SEQUENCES]
            info["val_perplexity"], info["n_val"] = text_lm_perplexity(lm, v.to(device)), len(v)
        return lm, {**info, "cached": True, "trained": False, "cache_path": str(entry)}
    lm, info = train_text_lm(train, vocab_size, val=val, **settings)
    entry.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in lm.state_dict().items()}
    atomic_write_with(entry / "model.safetensors",
                      lambda p: save_file(state, str(p), metadata={"arch": ARCH_VERSION}))
    meta = {"key": _canonical(key), "full_key": full_key, "val": val_fp,
            "val_perplexity": info["val_perplexity"], "train_time_s": info["train_time_s"],
            "info": _canonical(info)}
    atomic_write_with(entry / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    return lm, {**info, "cached": False, "trained": True, "cache_path": str(entry)}


#: ``TextLMExtractor(pool=...)``: "mean_fit" (2 · d_model) or "mean" (d_model)
POOLS = ("mean_fit", "mean")


class TextLMExtractor(FeatureExtractor):
    """Sequence features of a fitted GPTModel over [BOS, x_0 … x_{L−2}] (see the module
    docstring): ``pool="mean_fit"`` (N, 2 · d_model), ``pool="mean"`` (N, d_model).

    Args:
        lm: the fitted :class:`~loops.models.gpt.GPTModel` (trained on the REAL TRAIN split);
            kept as :attr:`lm` — a reference LM for ``ppl_ref`` too.
        source: data source name shown by :meth:`describe`.
        perplexity: its held-out perplexity on the reference split, shown by :meth:`describe`.
        pool: "mean_fit" or "mean".
    """

    name = "text_lm"

    def __init__(self, lm, source: str = "custom", perplexity: Optional[float] = None,
                 pool: str = "mean_fit"):
        super().__init__()
        if lm.net is None:
            raise ValueError("text_lm: the language model is not fitted")
        if pool not in POOLS:
            raise ValueError(f"text_lm: pool={pool!r}; choose from {', '.join(POOLS)}")
        self.lm, self.pool = lm, pool
        self.net = lm.net                       # a submodule: extract() moves it, eval() applies
        self.dim = lm.d_model * (2 if pool == "mean_fit" else 1)
        self.source, self.perplexity = source, perplexity
        self.vocab_size, self.seq_len = lm.vocab_size, lm.seq_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from loops.models.text_lm import BOS

        inp = torch.cat([torch.full_like(x[:, :1], BOS), x[:, :-1]], dim=1)
        h = self.lm.hidden_states(inp)                                      # (B, L, d)
        if self.pool == "mean":
            return h.mean(dim=1)
        e = self.net.wte.weight[x].float()                                  # (B, L, d)
        e = e * (h.shape[-1] ** 0.5 / e.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return torch.cat([h.mean(dim=1), (h * e).mean(dim=1)], dim=1)

    def extract(self, x: Union[torch.Tensor, np.ndarray], batch_size: Optional[int] = None,
                device: Union[str, torch.device, None] = None) -> torch.Tensor:
        """(N, dim) float32 CPU features of token sequences x (N, L) int64, ids in
        [1, vocab_size), 1 ≤ L ≤ seq_len; batched, no grad, eval mode."""
        x = _check_tokens(x, self.vocab_size, self.name)
        if not 1 <= x.shape[1] <= self.seq_len:
            raise ValueError(f"{self.name}: sequences of length {x.shape[1]}; the LM takes "
                             f"1 to seq_len={self.seq_len} tokens")
        return super().extract(x, batch_size=batch_size, device=device)

    def describe(self) -> str:
        ppl = f", ppl={self.perplexity:.1f}" if self.perplexity is not None else ""
        pool = "" if self.pool == "mean_fit" else f", pool={self.pool}"
        gpt = f"gpt {self.lm.n_layer}x{self.lm.d_model}"
        return f"text_lm({self.source}, {gpt}, d={self.dim}{ppl}{pool})"


def build_text_lm_extractor(lm=None, *, source: Optional[str] = None,
                            perplexity: Optional[float] = None,
                            cache_dir: Optional[str] = None, key: Optional[dict] = None,
                            train: Optional[torch.Tensor] = None,
                            vocab_size: Optional[int] = None, val: Optional[torch.Tensor] = None,
                            pool: str = "mean_fit", **settings) -> TextLMExtractor:
    """A :class:`TextLMExtractor` from a fitted ``lm``, or from training / the cache on ``train``
    (the REAL TRAIN split; ``vocab_size`` defaults to its max id + 1 — give the tokenizer's)."""
    if lm is None:
        if train is None:
            raise ValueError("text_lm features need lm=<fitted GPTModel>, or train (the real "
                             "TRAIN split) and optionally cache_dir")
        vocab_size = vocab_size or int(train.max()) + 1
        source = source or (key or {}).get("source")
        if cache_dir is not None:
            lm, info = load_or_train_text_lm(cache_dir, key or {"source": source}, train,
                                             vocab_size, val=val, **settings)
        else:
            lm, info = train_text_lm(train, vocab_size, val=val, **settings)
        perplexity = perplexity if perplexity is not None else info.get("val_perplexity")
    return TextLMExtractor(lm, source=source or "custom", perplexity=perplexity, pool=pool)
