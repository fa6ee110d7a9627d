"""The three loop families of Alemohammad et al. §2.2, each with replace or accumulate history.

Generation 1 always trains on real data only. From generation 2 on:

- fully synthetic: synthetic data only;
- synthetic augmentation: a *fixed* real set (the one of generation 1) plus synthetic data;
- fresh data: ``n_real`` *new* real samples each generation plus synthetic data.

``replace`` keeps only the previous generation's samples S_{t-1}; ``accumulate`` keeps all of
S_1..S_{t-1} (Gerstgrasser et al. 2024).
"""
from __future__ import annotations

from typing import Callable

from loops.errors import LoopError
from loops.pool import Pool

FAMILIES = ("fully_synthetic", "synthetic_augmentation", "fresh_data")
HISTORIES = ("replace", "accumulate")

#: Returns ``n`` real samples for generation ``t`` as a Pool (deterministic in t).
RealDraw = Callable[[int], Pool]


class LoopFamily:
    """Composes the training pool of each generation.

    Args:
        family: one of :data:`FAMILIES`.
        history: "replace" or "accumulate".
    """

    def __init__(self, family: str, history: str = "replace"):
        if family not in FAMILIES:
            raise LoopError(f"unknown loop family '{family}'",
                            f"set loop.family to one of {', '.join(FAMILIES)}")
        if history not in HISTORIES:
            raise LoopError(f"unknown loop history '{history}'",
                            f"set loop.history to one of {', '.join(HISTORIES)}")
        self.family = family
        self.history = history

    @property
    def needs_fresh_real(self) -> bool:
        return self.family == "fresh_data"

    def compose(self, t: int, fixed_real: Pool, fresh_real: RealDraw,
                synthetic_history: list[Pool]) -> Pool:
        """The pool of generation ``t`` (1-based).

        Args:
            fixed_real: the real set of generation 1 (reused by synthetic augmentation).
            fresh_real: ``fresh_real(t)`` gives generation t's new real samples (fresh data).
            synthetic_history: S_1..S_{t-1}, the samples of earlier generations, oldest first.
        """
        if t == 1:
            return fresh_real(1) if self.needs_fresh_real else fixed_real
        if len(synthetic_history) < t - 1:
            raise ValueError(f"generation {t} needs {t - 1} earlier synthetic sets, "
                             f"got {len(synthetic_history)}")
        synthetic = (synthetic_history[:t - 1] if self.history == "accumulate"
                     else [synthetic_history[t - 2]])
        if self.family == "fully_synthetic":
            parts = synthetic
        elif self.family == "synthetic_augmentation":
            parts = [fixed_real, *synthetic]
        else:
            parts = [fresh_real(t), *synthetic]
        return Pool.cat(parts)
