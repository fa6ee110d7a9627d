"""Train a LeNet once per (data source, settings) and reuse it: weights in safetensors, metadata in
JSON, under ``cache_dir/<hash of key>/``.

Layout of one entry::

    cache_dir/<16 hex>/model.safetensors   # LeNet state dict (float32)
    cache_dir/<16 hex>/meta.json           # key, train settings, accuracy, epochs, training time

Both files are written atomically (:func:`madcore.files.atomic_write_with`), the
JSON last, so a half-written entry is never read as complete and concurrent writers are safe.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from eval.features.lenet import LeNet
from eval.features.lenet_train import train_lenet
from madcore.files import atomic_write_with

__all__ = ["load_or_train_lenet", "cache_entry_dir", "ARCH_VERSION"]

#: bump when LeNet's architecture or preprocessing changes, so old cache entries are not reused
ARCH_VERSION = "lenet-v1"
_TRAIN_ARGS = ("epochs", "batch_size", "lr", "seed", "feature_dim", "channels", "in_channels",
               "augment_data")
_DEFAULTS = {k: p.default for k, p in inspect.signature(train_lenet).parameters.items()
             if k in _TRAIN_ARGS}


def _canonical(obj: Any) -> Any:
    """JSON round trip with sorted keys: the form keys are hashed and compared in."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _full_key(key: dict, train_kwargs: dict) -> dict:
    args = {k: train_kwargs.get(k, _DEFAULTS[k]) for k in _TRAIN_ARGS}
    args["channels"] = list(args["channels"])
    return _canonical({"key": key, "train": args, "arch": ARCH_VERSION})


def cache_entry_dir(cache_dir: Union[str, Path], key: dict, **train_kwargs) -> Path:
    """``cache_dir/<first 16 hex of sha256(key + training settings + ARCH_VERSION)>``."""
    blob = json.dumps(_full_key(key, train_kwargs), sort_keys=True).encode()
    return Path(cache_dir) / hashlib.sha256(blob).hexdigest()[:16]


def _load(entry: Path, full_key: dict, device) -> Optional[tuple[LeNet, dict]]:
    """The cached (model, info), or None when absent, for another key, or unreadable."""
    meta_path, weights_path = entry / "meta.json", entry / "model.safetensors"
    if not (meta_path.is_file() and weights_path.is_file()):
        return None
    t0 = time.perf_counter()
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("full_key") != full_key:
            return None
        info = meta["info"]
        model = LeNet(info["in_channels"], info["num_classes"], info["feature_dim"],
                      tuple(info["channels"]))
        model.load_state_dict(load_file(str(weights_path)))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        warnings.warn(f"lenet cache entry {entry} is unreadable ({e}); retraining", stacklevel=3)
        return None
    info = {**info, "trained": False, "cached": True, "cache_path": str(entry),
            "load_time_s": time.perf_counter() - t0}
    return model.to(device).eval(), info


def load_or_train_lenet(cache_dir: Union[str, Path], key: dict,
                        train_x: Optional[torch.Tensor], train_y: Optional[torch.Tensor],
                        val_x: Optional[torch.Tensor] = None, val_y: Optional[torch.Tensor] = None,
                        **train_kwargs) -> tuple[LeNet, dict]:
    """Load the LeNet cached for ``key``, or train it with :func:`train_lenet` and cache it.

    Args:
        cache_dir: root folder of the cache (created if missing).
        key: JSON-able dict the caller builds to identify the training data, e.g.
            ``{"source": "mnist5k", "image_size": 28, "split_seed": 0, "n_train": 4000}``.
            The training settings (epochs, batch size, lr, seed, widths, augmentation; not
            device, threads or progress) and ARCH_VERSION are
            added to it automatically before hashing, so changing any of them retrains.
        train_x, train_y: (N, C, H, W) real TRAIN images in [0, 1] and (N,) labels; may be None
            when the entry is known to be cached (ValueError if it is not).
        val_x, val_y: held-out split for the reported accuracy (never trained on).
        **train_kwargs: passed to :func:`train_lenet` (epochs, batch_size, lr, seed, device,
            feature_dim, channels, in_channels, augment_data, num_threads, progress).

    Returns:
        (model in eval mode on ``train_kwargs['device']``, info). ``info`` is train_lenet's dict
        plus ``cached`` (True when loaded), ``trained`` (True when trained in this call),
        ``cache_path`` and, for loads, ``load_time_s``.
    """
    if not isinstance(key, dict):
        raise TypeError(f"lenet cache: key must be a dict, got {type(key).__name__}")
    full_key = _full_key(key, train_kwargs)
    entry = cache_entry_dir(cache_dir, key, **train_kwargs)
    device = train_kwargs.get("device", "cpu")
    hit = _load(entry, full_key, device)
    if hit is not None:
        return hit
    if train_x is None or train_y is None:
        raise ValueError(f"lenet cache: no entry for key {key} in {cache_dir} and no training "
                         "data given")
    model, info = train_lenet(train_x, train_y, val_x=val_x, val_y=val_y, **train_kwargs)
    entry.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(entry / "model.safetensors",
                  lambda p: save_file(state, str(p), metadata={"arch": ARCH_VERSION}))
    meta = {"key": _canonical(key), "full_key": full_key, "accuracy": info["val_accuracy"],
            "epochs": info["epochs"], "train_time_s": info["train_time_s"],
            "info": _canonical(info)}
    atomic_write_with(entry / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=2)))
    return model, {**info, "cached": False, "cache_path": str(entry)}
