"""Typed config schemas derived from a class's constructor, for Hydra's ConfigStore.

A component that Hydra builds from ``_target_`` (a generative model, a data source, a watermark
method) keeps its one set of defaults in its ``__init__`` signature. :func:`signature_schema`
turns that signature into a dataclass — one field per keyword parameter, with its annotation and
default, plus ``_target_`` — that OmegaConf accepts as a structured config. A yaml that starts
from it (``defaults: [<name>_schema, _self_]``) is then typed and closed at composition:
``model.latent_dim=abc`` or ``model.no_such_key=1`` is refused before anything runs.

Annotations OmegaConf cannot hold (``Sequence[int]``, ``Union[None, int, Sequence[int]]``,
``Path``, a class) become the nearest one it can: ``List[...]`` for sequences, ``Any`` otherwise;
tuple defaults become list defaults (what a yaml list composes to anyway).
"""
from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from dataclasses import field, make_dataclass
from typing import Any, Callable, List, Optional, Union

from hydra.utils import get_object
from omegaconf import MISSING

_PRIMITIVES = (int, float, bool, str)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def config_type(tp: Any) -> Any:
    """The annotation ``tp`` as a type OmegaConf's structured configs support (see the module
    docstring): primitives, ``Optional``/``Union`` of primitives, ``List[...]``; else ``Any``."""
    if tp in _PRIMITIVES or tp is Any:
        return tp
    if _is_union(tp):
        args = typing.get_args(tp)
        inner = [a for a in args if a is not type(None)]
        nullable = len(inner) < len(args)
        if len(inner) == 1:
            kind = config_type(inner[0])
            return Optional[kind] if nullable and kind is not Any else kind
        if all(a in _PRIMITIVES for a in inner):
            return Optional[Union[tuple(inner)]] if nullable else Union[tuple(inner)]
        return Any
    origin = typing.get_origin(tp)
    if origin in (list, tuple, collections.abc.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item = config_type(args[0]) if len(set(args)) == 1 else Any
        return List[item if item in _PRIMITIVES else Any]
    return Any


def _default(value: Any) -> Any:
    """A dataclass field default for a parameter default (lists and tuples by factory)."""
    if value is inspect.Parameter.empty:
        return field(default=MISSING)
    if isinstance(value, (list, tuple)):
        return field(default_factory=lambda v=list(value): list(v))
    return field(default=value)


def parameters(target: Callable) -> dict[str, inspect.Parameter]:
    """The keyword parameters of ``target`` (a class: its ``__init__``), without self, *args
    and **kwargs."""
    fn = target.__init__ if inspect.isclass(target) else target
    return {name: p for name, p in inspect.signature(fn).parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def signature_schema(target: str | Callable, name: Optional[str] = None) -> type:
    """A dataclass with ``_target_`` (the dotted path) and one typed field per parameter of
    ``target``'s constructor, defaulting to the parameter's default (``MISSING`` if it has
    none). ``name``: the dataclass's name (default ``<Class>Schema``)."""
    path = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
    obj = get_object(path) if isinstance(target, str) else target
    fn = obj.__init__ if inspect.isclass(obj) else obj
    hints = typing.get_type_hints(fn)
    fields: list[tuple[str, Any, Any]] = [("_target_", str, field(default=path))]
    for pname, p in parameters(obj).items():
        fields.append((pname, config_type(hints.get(pname, Any)), _default(p.default)))
    return make_dataclass(name or f"{getattr(obj, '__name__', 'Target')}Schema", fields)
