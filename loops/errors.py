"""Errors the loop engine raises for bad configuration or diverged models, and the setting
checks that raise them."""
from __future__ import annotations

import math

from madcore.errors import MadmarkError


class LoopError(MadmarkError, ValueError):
    """A loop, model or pool problem the user can fix; printed by the CLI as one line, exit code 2.
    A :class:`~madcore.errors.MadmarkError` that is also a ``ValueError``."""


def check_int(model: str, key: str, value, low: int = 1) -> int:
    """A model hyperparameter ``value`` as an int >= ``low`` (a bool, a non-integral or non-finite
    number, or a non-number is refused), else a LoopError naming ``model.<key>``."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value == int(value))
    if not ok or int(value) < low:
        raise LoopError(f"{model} {key}={value!r} must be an integer >= {low}",
                        f"set model.{key} to an integer >= {low}")
    return int(value)


def check_bias(bias: float) -> float:
    """Validate a sampling bias λ ∈ (0, 1] (1 = unbiased) and return it as a float."""
    bias = float(bias)
    if not (0.0 < bias <= 1.0):
        raise LoopError(f"sampling bias λ={bias} is outside (0, 1]",
                        "set loop.bias to a value in (0, 1]; 1 is unbiased")
    return bias
