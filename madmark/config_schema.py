"""The types of ``madmark run``'s settings, declared, and the check of a composed config.

Hydra hands on whatever a user types: ``loop.bias=abc`` reaches the loop as the string 'abc' and
fails deep inside with a traceback. :func:`check_config` compares the composed config with

- the dataclasses below, for the top-level run settings (:class:`RunSchema`), the loop group
  (:class:`LoopSchema`) and the evaluation (:class:`EvalSchema`): ``int`` stays an integer,
  ``float`` a number, ``bool`` true or false, ``Optional[...]`` may be null. Every field is
  ``MISSING`` (the values stay in configs/); :class:`RunSchema` is registered in Hydra's
  ConfigStore as ``run_schema`` (configs/__init__.py) and ``configs/config.yaml`` starts from it,
  so composition already refuses a mistyped value; the check here repeats it for a recorded
  config a resumed run reopens, and its messages are the ones the command line shows
  (madmark.hydra_app.check_schema_types);
- for every other group (data, model, watermark, filter, logger) the types its config files
  imply (:func:`implied_types`): a key whose value in the files is a number must stay a number, a
  bool a bool (the files composed with the command line's group choices, without its key=value
  overrides); null is let through there (a file does not say whether a key may be null).

It only reads: the config that runs is the one Hydra composed, unchanged. A mismatch is a
one-line :class:`MadmarkError`, e.g. ``loop.bias='abc' is not a number — set loop.bias=0.8``.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Iterator, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from madcore.errors import MadmarkError


def setting(example: Any) -> Any:
    """A declared setting: no default here (the config files hold the values), and the example
    value an error message suggests."""
    return field(default=MISSING, metadata={"example": example})


@dataclass
class LoopSchema:
    """``configs/loop/*.yaml``."""
    family: str = setting("fully_synthetic")
    history: str = setting("replace")
    generations: int = setting(10)
    n_real: Optional[int] = setting(1000)
    n_synthetic: Optional[int] = setting(1000)
    bias: float = setting(0.8)


@dataclass
class FeaturesSchema:
    """``eval.features``."""
    name: str = setting("auto")
    weights_path: Optional[str] = setting("<weights file>")
    hub_dir: Optional[str] = setting("<dinov2 clone>")
    cache_dir: str = setting("~/.cache/madmark/features")
    epochs: int = setting(8)
    seed: int = setting(0)
    batch_size: int = setting(256)


@dataclass
class EvalSchema:
    """``configs/eval/default.yaml``."""
    enabled: bool = setting(True)
    features: FeaturesSchema = field(default_factory=FeaturesSchema)
    k: int = setting(5)
    n_real: Optional[int] = setting(1000)
    n_fake: Optional[int] = setting(1000)
    fid: bool = setting(True)
    kid: bool = setting(True)
    kid_subsets: int = setting(20)
    kid_subset_size: int = setting(1000)
    cas: bool = setting(False)
    cas_augmented: bool = setting(False)
    cas_n_train: Optional[int] = setting(1000)
    cas_n_test: Optional[int] = setting(1000)
    cas_epochs: int = setting(2)
    cas_batch_size: int = setting(32)
    cas_lr: float = setting(0.003)
    cas_channels: List[int] = setting([6, 16])
    text_n_eval: Optional[int] = setting(1000)
    text_tail_share: float = setting(0.1)
    text_reference_order: int = setting(3)
    text_features: bool = setting(True)


def component() -> Any:
    """A component group's node (data, model, watermark, ...): open here, typed by the option's own
    schema (``<group>/<option>_schema``, configs/__init__.py) or the implied types."""
    return field(default=MISSING, metadata={"component": True})


@dataclass
class RunSchema:
    """The top level of ``configs/config.yaml``, in its order: the component groups (open), the
    loop and eval groups and the run settings (typed)."""
    data: Any = component()
    model: Any = component()
    loop: LoopSchema = field(default_factory=LoopSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)
    watermark: Any = component()
    filter: Any = component()
    logger: Any = component()
    data_name: str = setting("mnist5k")
    name: str = setting("default")
    seed: int = setting(0)
    device: str = setting("cpu")
    threads: Optional[int] = setting(1)
    out_dir: str = setting("outputs")
    resume: Optional[str] = setting("<run_dir>")
    resume_from: Optional[int] = setting(2)
    auto_resume: bool = setting(False)
    debug: bool = setting(False)
    progress: bool = setting(True)
    samples_grid: int = setting(64)


_ABSENT = object()


def declared(schema: type = RunSchema, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, type, example) of every leaf setting a schema dataclass declares: its own
    first, then those of its nested groups (so ``seed`` is named before ``eval.features.seed``,
    which interpolates it)."""
    hints = typing.get_type_hints(schema)
    typed = [f for f in fields(schema) if not f.metadata.get("component")]
    for f in typed:
        if not is_dataclass(hints[f.name]):
            yield f"{prefix}{f.name}", hints[f.name], f.metadata.get("example")
    for f in typed:
        if is_dataclass(hints[f.name]):
            yield from declared(hints[f.name], f"{prefix}{f.name}.")


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type inside ``Optional[...]``, whether null is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0], len(inner) < len(typing.get_args(tp))
    return tp, False


def _number(value: Any, integral: bool) -> bool:
    """An int (or, unless ``integral``, a float), or a string that reads as one (OmegaConf's typed
    nodes accept "5" for 5); never a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int) or (isinstance(value, float) and not integral):
        return True
    if isinstance(value, str):
        try:
            int(value) if integral else float(value)
        except ValueError:
            return False
        return True
    return False


def fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` (resolved) is a ``tp`` setting (see the module docstring)."""
    tp, nullable = _optional(tp)
    if value is None:
        return nullable
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return _number(value, integral=True)
    if tp is float:
        return _number(value, integral=False)
    if tp is str:
        return not isinstance(value, (dict, list, DictConfig)) and not OmegaConf.is_list(value)
    return True


def _kind(tp: Any) -> str:
    tp, nullable = _optional(tp)
    kind = {bool: "true or false", int: "an integer", float: "a number"}.get(tp, "a string")
    return f"{kind} or null" if nullable and tp is not bool else kind


def show(value: Any) -> str:
    """A value as it would be typed on the command line (strings quoted, so 'abc' reads as one)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, (str, float)) else str(value)


def mismatch(key: str, value: Any, tp: Any, example: Any) -> MadmarkError:
    inner, nullable = _optional(tp)
    if inner is bool:
        fix = f"set {key}=true or {key}=false"
    else:
        fix = f"set {key}={show(example) if isinstance(example, bool) else example}"
        fix += f" or {key}=null" if nullable else ""
    return MadmarkError(f"{key}={show(value)} is not {_kind(tp)}", fix)


def _value(cfg: DictConfig, key: str) -> Any:
    """The resolved value at ``key``; _ABSENT when the key (or its ``???``) is not there."""
    parent_key, _, last = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=_ABSENT) if parent_key else cfg
    if not isinstance(parent, DictConfig) or last not in parent or OmegaConf.is_missing(parent,
                                                                                      last):
        return _ABSENT
    try:
        value = parent[last]
    except OmegaConfBaseException as error:
        raise MadmarkError(f"{key} cannot be resolved ({str(error).splitlines()[0]})",
                           f"set {key}=<value> on the command line") from None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def implied_types(baseline: DictConfig, skip: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (type, example)} of the numbers and bools of a config as the files give it
    (``baseline``: composed without key=value overrides); interpolations, nulls, strings and the
    keys in ``skip`` are left out. A file's integer may stand for a float, so numbers imply
    ``float`` (any number), bools ``bool``."""
    out: dict[str, tuple[Any, Any]] = {}

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node.keys():
            path = f"{prefix}{key}"
            if path in skip or OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node,
                                                                                          key):
                continue
            value = node[key]
            if isinstance(value, DictConfig):
                walk(value, f"{path}.")
            elif isinstance(value, bool):
                out[path] = (bool, value)
            elif isinstance(value, (int, float)) and math.isfinite(value):
                out[path] = (float, value)

    walk(baseline, "")
    return out


def check_config(cfg: DictConfig, implied: Optional[dict[str, tuple[Any, Any]]] = None,
                 schema: Optional[type] = RunSchema) -> None:
    """Raise MadmarkError for the first setting of ``cfg`` that is not of its declared type
    (``schema``; None: none declared), then for the first that is not of its implied type (``implied``, from
    :func:`implied_types`). Keys absent from ``cfg`` (an older recorded config) are skipped."""
    checks = [(key, tp, example, False) for key, tp, example in
              (declared(schema) if schema is not None else ())]
    names = {key for key, _, _, _ in checks}
    checks += [(key, tp, example, True) for key, (tp, example) in (implied or {}).items()
               if key not in names]
    for key, tp, example, null_ok in checks:       # a file does not say whether null is allowed
        value = _value(cfg, key)
        if value is _ABSENT or (value is None and null_ok):
            continue
        if not fits(value, tp):
            raise mismatch(key, value, tp, example)
