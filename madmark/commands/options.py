"""``key=value`` options for the non-Hydra commands (embed, detect, filter)."""
from __future__ import annotations

from typing import Any

from madcore.errors import MadmarkError


def parse(args: list[str], positional: list[str], options: dict[str, Any],
          command: str) -> dict[str, Any]:
    """Split ``args`` into the named positional arguments and ``key=value`` options.

    ``options`` maps each allowed key to its default (its type converts the value)."""
    values = dict(options)
    pos = [a for a in args if "=" not in a]
    if len(pos) != len(positional):
        raise MadmarkError(f"madmark {command} takes {len(positional)} folder argument(s) "
                           f"({', '.join(positional)}), got {len(pos)}",
                           f"run madmark {command} --help")
    for arg in (a for a in args if "=" in a):
        key, _, value = arg.partition("=")
        if key not in options:
            raise MadmarkError(f"unknown option '{key}' for madmark {command}",
                               f"use one of {', '.join(options)}")
        default = options[key]
        try:
            values[key] = type(default)(value) if default is not None else value
        except ValueError:
            raise MadmarkError(f"{key}={value} is not a valid {type(default).__name__}",
                               f"set {key} to a {type(default).__name__}") from None
    values.update(zip(positional, pos))
    return values
