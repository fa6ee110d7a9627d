"""``build_extractor(name, **kwargs)``: every feature extractor by its config name."""
from __future__ import annotations

import inspect
from typing import Callable, Optional

import torch

from eval.features.base import FeatureExtractor
from eval.features.dinov2 import DINOv2Extractor
from eval.features.inception import InceptionExtractor
from eval.features.lenet import LeNet, LeNetExtractor
from eval.features.lenet_cache import load_or_train_lenet
from eval.features.lenet_train import train_lenet
from eval.features.random_cnn import RandomCNNExtractor
from eval.features.raw import RawExtractor
from eval.features.text_lm import build_text_lm_extractor

__all__ = ["build_extractor", "build_lenet_extractor", "EXTRACTORS"]


def build_lenet_extractor(model: Optional[LeNet] = None, *, source: Optional[str] = None,
                          accuracy: Optional[float] = None, cache_dir: Optional[str] = None,
                          key: Optional[dict] = None, train_x: Optional[torch.Tensor] = None,
                          train_y: Optional[torch.Tensor] = None,
                          val_x: Optional[torch.Tensor] = None, val_y: Optional[torch.Tensor] = None,
                          **train_kwargs) -> LeNetExtractor:
    """A :class:`LeNetExtractor` from a trained ``model``, or from training / the cache.

    With ``model``: wrapped as is. Otherwise trains on ``train_x, train_y`` (the source's REAL
    TRAIN split) — through :func:`load_or_train_lenet` when ``cache_dir`` is given (``key``
    defaults to ``{"source": source}``), else with :func:`train_lenet` directly. ``source``
    defaults to ``key["source"]``; ``accuracy`` to the held-out accuracy on ``val_x, val_y``.
    """
    if model is None:
        source = source or (key or {}).get("source")
        if cache_dir is not None:
            model, info = load_or_train_lenet(cache_dir, key or {"source": source}, train_x, train_y,
                                              val_x, val_y, **train_kwargs)
        elif train_x is not None and train_y is not None:
            model, info = train_lenet(train_x, train_y, val_x=val_x, val_y=val_y, **train_kwargs)
        else:
            raise ValueError("lenet features need model=<trained LeNet>, or train_x/train_y "
                             "(the real TRAIN split) and optionally cache_dir")
        accuracy = accuracy if accuracy is not None else info.get("val_accuracy")
    return LeNetExtractor(model, source=source or "custom", accuracy=accuracy)


#: config name → constructor
EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "raw": RawExtractor,
    "random_cnn": RandomCNNExtractor,
    "lenet": build_lenet_extractor,
    "inception": InceptionExtractor,
    "dinov2": DINOv2Extractor,
    "text_lm": build_text_lm_extractor,
}


def build_extractor(name: str, **kwargs) -> FeatureExtractor:
    """The extractor called ``name`` (one of :data:`EXTRACTORS`), built with ``kwargs``.

    Keyword arguments set to None are dropped (they mean "default"), so one config block with
    the union of all options (weights_path, hub_dir, seed, ...) can feed any extractor; other
    arguments the extractor does not take raise ValueError listing the ones it does.

    Raises:
        ValueError: unknown name (lists the choices) or unknown argument.
        FeatureUnavailable: a pretrained extractor whose weights are missing offline.
    """
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose from {', '.join(EXTRACTORS)}")
    ctor = EXTRACTORS[name]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    params = inspect.signature(ctor).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(f"feature extractor {name!r} does not take {', '.join(unknown)}; "
                             f"it takes {', '.join(params) or 'no arguments'}")
    return ctor(**kwargs)
