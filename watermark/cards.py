"""Model cards of learned watermarkers: one small YAML per model, next to its safetensors weights.

    save_card(model, "watermark/cards/digits32.yaml", training_config, metrics)   # writes .yaml + .safetensors
    wm = load_card("watermark/cards/digits32.yaml")        # -> LearnedWatermarker (eval mode)
    wm = load("digits32")                                   # a name in watermark/cards/, or a path
    read_card("digits32")                                   # the card as a dict (metrics included)

A card (YAML mapping):
    name: digits32
    kind: learned
    architecture: {num_bits, work_size, alpha, channels, width, msg_dim, pool, jnd}
    weights: digits32.safetensors          # relative to the card's folder
    training: {...}                        # the training config (steps, lr, attacks, seed, ...)
    metrics: {bit_acc, bit_acc_jpeg50, psnr, ...}    # measured on held-out images
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from madcore.files import atomic_write_text

from .learned import LearnedWatermarker

CARDS_DIR = Path(__file__).resolve().parent / "cards"
ARCH_KEYS = ("num_bits", "work_size", "alpha", "channels", "width", "msg_dim", "pool", "jnd")


def _plain(obj: Any) -> Any:
    """Numbers, strings, lists and dicts only (tensors / numpy scalars -> Python), for safe YAML."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def save_card(model: LearnedWatermarker, path: str | os.PathLike, training_config: Mapping | None = None,
              metrics: Mapping | None = None, name: str | None = None) -> Path:
    """Write `<path>` (.yaml) and the weights `<stem>.safetensors` beside it; returns the card path."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        path = path.with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = path.with_suffix(".safetensors")
    model.save(weights)
    card = {"name": name or path.stem, "kind": "learned", "architecture": _plain(model.hparams()),
            "weights": weights.name, "training": _plain(dict(training_config or {})),
            "metrics": _plain(dict(metrics or {}))}
    atomic_write_text(path, yaml.safe_dump(card, sort_keys=False))
    return path


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Card path for a name in CARDS_DIR ("digits32") or a path (with or without .yaml)."""
    p = Path(name_or_path)
    candidates = [p, p.with_suffix(".yaml"), CARDS_DIR / f"{p.name}.yaml", CARDS_DIR / f"{p.name}.yml"] \
        if p.suffix not in (".yaml", ".yml") else [p, CARDS_DIR / p.name]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted(q.stem for q in CARDS_DIR.glob("*.yaml")) if CARDS_DIR.is_dir() else []
    raise FileNotFoundError(f"no model card {os.fspath(name_or_path)!r}: tried {[str(c) for c in candidates]}; "
                            f"cards in {CARDS_DIR}: {known or 'none'}")


def read_card(name_or_path: str | os.PathLike) -> dict:
    """The card (dict) of a name or path, checked: kind, architecture keys, weights file present."""
    path = resolve(name_or_path)
    card = yaml.safe_load(path.read_text())
    if not isinstance(card, dict) or card.get("kind", "learned") != "learned":
        raise ValueError(f"{path} is not a learned-watermarker card")
    missing = [k for k in ("architecture", "weights") if k not in card]
    missing += [f"architecture.{k}" for k in ARCH_KEYS if k not in card.get("architecture", {})]
    if missing:
        raise ValueError(f"model card {path} lacks {missing}")
    weights = (path.parent / card["weights"]).resolve()
    if not weights.is_file():
        raise FileNotFoundError(f"model card {path} names weights {card['weights']!r}, not found at {weights}")
    card["weights_path"], card["card_path"] = str(weights), str(path)
    return card


def load_card(path: str | os.PathLike, device: str = "cpu") -> LearnedWatermarker:
    """The LearnedWatermarker of a card (eval mode), with `.card` holding the card dict."""
    card = read_card(path)
    arch = {k: card["architecture"][k] for k in ARCH_KEYS}
    model = LearnedWatermarker.load(card["weights_path"], device=device, **arch)
    model.card = card
    return model


def load(name_or_path: str | os.PathLike, device: str = "cpu") -> LearnedWatermarker:
    """`load_card` of a name in watermark/cards/ or a path to a card."""
    return load_card(name_or_path, device=device)
