"""``key=value`` options for the non-Hydra commands (embed, detect, filter, radioactivity).

Each command declares its options as one dataclass (:class:`EmbedOptions`, :class:`DetectOptions`,
:class:`FilterOptions`, :class:`RadioactivityOptions`): the field names are the keys it takes,
their annotations convert the values, and their defaults are the command's only defaults.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any

from madcore.errors import MadmarkError


@dataclass
class EmbedOptions:
    """``madmark embed``: the key (``key`` or ``key_file``), the method and its settings
    (``strength``: residual RMS on [0, 1] pixels), images per embed call."""
    key: str = ""
    key_file: str = ""
    method: str = "spread_spectrum"
    bits: int = 32
    strength: float = 0.01
    batch_size: int = 64


@dataclass
class DetectOptions:
    """``madmark detect``: the key, the false-positive rate, the CSV written (``""``: next to the
    folder's name), and the method settings (images, empty/0: from the folder's watermark.json,
    else spread spectrum's 32 bits at 0.01; text: the options below)."""
    key: str = ""
    key_file: str = ""
    alpha: float = 0.01
    out: str = ""
    method: str = ""
    bits: int = 0
    strength: float = 0.0
    batch_size: int = 64         # images, or text documents, per call
    other_key: bool = False      # true: test this key although watermark.json names another
    # text (madmark/commands/text.py): which modality, the tokenizer, the run it came from, the
    # .jsonl field, de-duplication, and the text watermark's settings; a setting not given comes
    # from run=<dir>'s config.yaml, else the method's defaults (configs/watermark/{kgw,exp}.yaml)
    modality: str = "auto"       # auto | image | text (auto: by file suffix, madmark/text_io.py)
    tokenizer: str = ""          # the run's tokenizer.json (or "bytes")
    run: str = ""                # a text run folder: its tokenizer.json and watermark settings
    text_field: str = "text"
    dedup: str = "document"      # document | none
    gamma: float = 0.0
    delta: float = 0.0
    context_width: int = 0
    green_list: str = ""
    test: str = ""


@dataclass
class FilterOptions(DetectOptions):
    """``madmark filter``: detect's options and known-clean images or text documents to
    calibrate the flag on."""
    calibrate: str = ""


@dataclass
class RadioactivityOptions:
    """``madmark radioactivity``: see madmark/commands/radioactivity.py."""
    generation: int = 0
    n: int = 2000
    alpha: float = 0.01
    clean_run: str = ""
    clean_generation: int = 1
    key_file: str = ""
    other_key: bool = False      # true: test key_file although the run marked with another key
    seed: int = 0
    device: str = "cpu"
    out: str = ""


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def to_bool(value: str) -> bool:
    """``true``/``false`` (also yes/no, 1/0, on/off; any case) as a bool; else ValueError.
    ``bool("false")`` would be True."""
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError(value)


def defaults(options: type) -> dict[str, Any]:
    """{key: default} of an options dataclass."""
    return {f.name: f.default for f in fields(options)}


def parse(args: list[str], positional: list[str], options: type,
          command: str) -> dict[str, Any]:
    """Split ``args`` into the named positional arguments and ``key=value`` options.

    ``options``: the command's options dataclass (its fields' types convert the values)."""
    values = defaults(options)
    types = typing.get_type_hints(options)
    pos = [a for a in args if "=" not in a]
    if len(pos) != len(positional):
        raise MadmarkError(f"madmark {command} takes {len(positional)} folder argument(s) "
                           f"({', '.join(positional)}), got {len(pos)}",
                           f"run madmark {command} --help")
    for arg in (a for a in args if "=" in a):
        key, _, value = arg.partition("=")
        if key not in values:
            raise MadmarkError(f"unknown option '{key}' for madmark {command}",
                               f"use one of {', '.join(values)}")
        kind = types[key]
        try:
            values[key] = to_bool(value) if kind is bool else kind(value)
        except ValueError:
            if kind is bool:
                raise MadmarkError(f"{key}={value} is not true or false",
                                   f"set {key}=true or {key}=false") from None
            raise MadmarkError(f"{key}={value} is not a valid {kind.__name__}",
                               f"set {key} to a {kind.__name__}") from None
    values.update(zip(positional, pos))
    return values
