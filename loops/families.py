"""The three loop families of Alemohammad et al. §2.2, each with replace or accumulate history.

Generation 1 always trains on real data only. From generation 2 on:

- fully synthetic: synthetic data only;
- synthetic augmentation: a *fixed* real set (the one of generation 1) plus synthetic data;
- fresh data: ``n_real`` *new* real samples each generation plus synthetic data.

``replace`` keeps only the previous generation's samples S_{t-1}; ``accumulate`` keeps all of
S_1..S_{t-1} (Gerstgrasser et al. 2024).
"""
from __future__ import annotations

from typing import Callable, ClassVar

from loops.errors import LoopError
from loops.pool import Pool

#: Returns ``n`` real samples for generation ``t`` as a Pool (deterministic in t).
RealDraw = Callable[[int], Pool]


class RealPart:
    """What a family adds to the synthetic samples of generation t >= 2: :meth:`real` gives the
    real part (None: none), ``needs_fresh_real`` whether it draws new real samples. One subclass
    per family, registered in :data:`REAL_PARTS` under its ``name`` (``loop.family``)."""

    name: ClassVar[str]
    needs_fresh_real: ClassVar[bool] = False

    def real(self, t: int, fixed_real: Pool, fresh_real: RealDraw) -> Pool | None:
        raise NotImplementedError


class FullySynthetic(RealPart):
    """Synthetic data only."""
    name = "fully_synthetic"

    def real(self, t: int, fixed_real: Pool, fresh_real: RealDraw) -> None:
        return None


class SyntheticAugmentation(RealPart):
    """The fixed real set of generation 1 plus synthetic data."""
    name = "synthetic_augmentation"

    def real(self, t: int, fixed_real: Pool, fresh_real: RealDraw) -> Pool:
        return fixed_real


class FreshData(RealPart):
    """``n_real`` new real samples each generation plus synthetic data."""
    name = "fresh_data"
    needs_fresh_real = True

    def real(self, t: int, fixed_real: Pool, fresh_real: RealDraw) -> Pool:
        return fresh_real(t)


#: loop.family -> its class; a new family is a RealPart subclass added here
REAL_PARTS: dict[str, type[RealPart]] = {c.name: c for c in (FullySynthetic,
                                                             SyntheticAugmentation, FreshData)}
FAMILIES = tuple(REAL_PARTS)
#: loop.history -> whether all earlier synthetic sets are kept (else only the last)
HISTORIES = {"replace": False, "accumulate": True}


class LoopFamily:
    """Composes the training pool of each generation.

    Args:
        family: one of :data:`FAMILIES`.
        history: "replace" or "accumulate" (:data:`HISTORIES`).
    """

    def __init__(self, family: str, history: str = "replace"):
        if family not in REAL_PARTS:
            raise LoopError(f"unknown loop family '{family}'",
                            f"set loop.family to one of {', '.join(FAMILIES)}")
        if history not in HISTORIES:
            raise LoopError(f"unknown loop history '{history}'",
                            f"set loop.history to one of {', '.join(HISTORIES)}")
        self.family = family
        self.history = history
        self.part = REAL_PARTS[family]()

    @property
    def needs_fresh_real(self) -> bool:
        return self.part.needs_fresh_real

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
        synthetic = (synthetic_history[:t - 1] if HISTORIES[self.history]
                     else [synthetic_history[t - 2]])
        real = self.part.real(t, fixed_real, fresh_real)
        return Pool.cat(synthetic if real is None else [real, *synthetic])
