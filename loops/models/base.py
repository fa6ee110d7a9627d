"""The interface every generative model of the loop implements.

A model is trained from scratch on a pool each generation (``fit``), then draws samples with a
sampling bias λ ∈ (0, 1] (``sample``). λ = 1 is unbiased; λ < 1 trades diversity for quality as in
Alemohammad et al. §2.3 (Gaussian/GMM: covariance scaled by λ).

Data is either vectors ``(N, D)`` or images ``(N, C, H, W)`` float32 in [0, 1]; a model samples
tensors of the shape it was fitted on, on the device of its training data.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Optional

import torch

from madcore.columns import Column

#: Called as ``progress(step, total)`` during ``fit`` so the CLI can draw a progress bar.
ProgressFn = Callable[[int, int], None]

#: the engine writes a fit statistic ``key`` as the results.csv column ``fit_<key>``
FIT_PREFIX = "fit_"
#: what every fit statistic is computed on
FIT_ON = "generation t's training pool (after the filter), measured by the fit"


def fit_column(key: str, meaning: str, unit: str, computed_on: str = FIT_ON) -> Column:
    """The declaration of fit statistic ``key`` (results.csv column ``fit_<key>``)."""
    return Column(FIT_PREFIX + key, meaning, unit, computed_on)


#: shared by every model whose fit runs a fixed number of training steps
FIT_STEPS = fit_column("steps", "training steps of the fit (optimizer steps; WGAN-GP: generator "
                       "steps)", "count")


class GenerativeModel(ABC):
    """fit / sample / state_dict. Subclasses hold their hyperparameters from ``__init__`` (config)."""

    #: Data kinds the model accepts: "vector", "image" or both.
    accepts: tuple[str, ...] = ("vector", "image")

    @property
    def conditional(self) -> bool:
        """True when the fitted model samples given class labels (``num_classes > 0``)."""
        return self.num_classes > 0

    #: Number of classes a conditional model was fitted on (0 = unconditional).
    num_classes: int = 0

    #: The results.csv columns of the statistics ``fit`` returns (``fit_<key>``, see
    #: :func:`fit_column`), in the order it returns them.
    fit_columns: tuple[Column, ...] = ()

    @abstractmethod
    def fit(self, x: torch.Tensor, generator: torch.Generator,
            progress: Optional[ProgressFn] = None,
            labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """Train from scratch on ``x`` ((N, D) or (N, C, H, W)).

        ``labels``: int64 (N,) class labels of the pool, or None. Unconditional models ignore them;
        a :attr:`conditional` model trains on them.

        ``generator`` (on x's device) is the only source of randomness, so a generation is
        reproducible from its seed. Returns fit statistics (floats) for the generation's row;
        keys without prefix, the engine prefixes them with ``fit_``; :attr:`fit_columns` declares
        them.
        """

    @abstractmethod
    def sample(self, n: int, bias: float = 1.0,
               generator: Optional[torch.Generator] = None,
               labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Draw ``n`` samples with sampling bias λ = ``bias`` ∈ (0, 1]; shape (n, *data_shape).

        ``labels``: int64 (n,) classes to condition on (conditional models; the engine draws them
        uniformly and keeps them as the samples' labels), ignored by unconditional models."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Fitted parameters as tensors (loadable with ``torch.load(weights_only=True)``)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore fitted parameters saved by :meth:`state_dict`."""

    def moments(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Mean (D,) and covariance (D, D) of the fitted (unbiased, λ = 1) distribution for vector
        data, or ``None`` when the model cannot give them in closed form."""
        return None
