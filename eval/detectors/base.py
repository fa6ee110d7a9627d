"""What every real-vs-synthetic detector shares: training on two labelled sets, scores, a
threshold calibrated to a false-positive rate α on held-out real images, and flags.

    det = CNNDetector(CNNDetectorConfig())            # or LinearProbeDetector(extractor, ...)
    info = det.fit(real_train, synthetic_train, generator)   # n_real, n_synth, train_acc
    cal = det.calibrate(real_calibration, alpha=0.01)        # threshold, n, fpr, train_acc
    flagged = det.flag(pool_x)                               # bool (N,): score > threshold

Images are ``(N, C, H, W)`` float in [0, 1] (vectors ``(N, D)`` for a probe on raw features);
scores are ``(N,)`` float32 logits, higher = more likely synthetic. Nothing here knows where the
images came from: the caller chooses the training sets and says which in its results.

Calibration (:func:`conformal_threshold`). From the scores s_1..s_n of n real images the detector
was not trained on, the threshold is the k-th smallest, k = ⌈(n + 1)(1 − α)⌉: the empirical
(1 − α) quantile with the finite-sample (split-conformal) correction. A fresh real image
exchangeable with the calibration images then has P(score > threshold) = (n + 1 − k)/(n + 1) ≤ α
for continuous scores, averaged over calibration sets; given one calibration set the rate is
Beta(n + 1 − k, k) distributed, so the count of m fresh real images flagged is
BetaBinomial(m, n + 1 − k, k). Below α = 1/(n + 1) no threshold certifies α (k > n) and
:func:`conformal_threshold` refuses.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["Calibration", "SyntheticDetector", "conformal_rank", "conformal_threshold",
           "min_calibration", "balanced_accuracy"]


def conformal_rank(n: int, alpha: float) -> int:
    """k = ⌈(n + 1)(1 − α)⌉, the rank (1-based, ascending) of the threshold among n calibration
    scores; k > n means n is too small for α. The product is rounded to 9 decimals before the
    ceiling, so that e.g. n = 99, α = 0.01 gives k = 99, not 100 from a float rounding error."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} is outside (0, 1)")
    x = (n + 1) * (1 - alpha)
    return max(1, math.ceil(round(x, 9)))


def min_calibration(alpha: float) -> int:
    """Fewest calibration images for which a threshold at α exists (k ≤ n): ⌈(1 − α)/α⌉."""
    n = max(1, math.ceil(round((1 - alpha) / alpha, 9)))
    while conformal_rank(n, alpha) > n:          # guards the rounding of the closed form
        n += 1
    return n


def conformal_threshold(real_scores: torch.Tensor, alpha: float) -> float:
    """The k-th smallest of the n scores (N,), k = :func:`conformal_rank` (n, α); flag s > it.

    Raises:
        ValueError: fewer than :func:`min_calibration` (α) scores, or non-finite scores.
    """
    scores = real_scores.detach().flatten().double().cpu()
    n = len(scores)
    k = conformal_rank(n, alpha)
    if k > n:
        raise ValueError(f"{n} calibration scores cannot certify alpha={alpha}: at least "
                         f"{min_calibration(alpha)} are needed")
    if not torch.isfinite(scores).all():
        raise ValueError("calibration scores are not all finite")
    return float(scores.sort().values[k - 1])


def balanced_accuracy(real_scores: torch.Tensor, synth_scores: torch.Tensor,
                      threshold: float = 0.0) -> float:
    """½ (fraction of real scores ≤ threshold + fraction of synthetic scores > threshold)."""
    return 0.5 * (float((real_scores <= threshold).double().mean())
                  + float((synth_scores > threshold).double().mean()))


@dataclass(frozen=True)
class Calibration:
    """What :meth:`SyntheticDetector.calibrate` measured.

    Attributes:
        threshold: score above which an image is flagged (logit units).
        alpha: the target false-positive rate.
        n: calibration images (real, never trained on).
        fpr: fraction of the calibration images above the threshold ((n − k)/n without ties).
        train_acc: balanced accuracy on the training sets at the threshold (how the detector as
            used separates what it was trained on).
    """

    threshold: float
    alpha: float
    n: int
    fpr: float
    train_acc: float


class SyntheticDetector(ABC):
    """A binary real (0) vs synthetic (1) classifier with a calibrated threshold.

    Subclasses implement :meth:`_fit` and :meth:`_scores` (one batch, under no_grad) and name
    themselves in :meth:`describe`. Scoring and flagging run in batches on the device the model
    was trained on; inputs may live anywhere and results come back on the input's device.

    Args:
        batch_size: images per scoring batch.
    """

    name = "detector"

    def __init__(self, batch_size: int = 512):
        self.batch_size = int(batch_size)
        self.calibration: Optional[Calibration] = None
        self.device: Optional[torch.device] = None
        self._train_scores: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- training ----------------------------------------------------------------------------
    def fit(self, real: torch.Tensor, synthetic: torch.Tensor,
            generator: torch.Generator) -> dict[str, float | int]:
        """Train from scratch on ``real`` (N_r, ...) labelled 0 and ``synthetic`` (N_s, ...)
        labelled 1 (same trailing shape, both on the device to train on), each class weighted
        ½ in the loss whatever N_r and N_s; ``generator`` (CPU) draws every random number.

        Returns:
            n_real, n_synth, and train_acc: the balanced accuracy on the training sets at score 0
            (the classifier's own decision, before calibration; a CNN's BatchNorm statistics
            lag its last steps, so it can be far below the accuracy at the calibrated threshold,
            :attr:`Calibration.train_acc`), a fraction in [0, 1].
        """
        if real.shape[1:] != synthetic.shape[1:]:
            raise ValueError(f"real {tuple(real.shape)} and synthetic {tuple(synthetic.shape)} "
                             "samples differ in shape")
        if len(real) < 1 or len(synthetic) < 1:
            raise ValueError("a detector needs real and synthetic training samples")
        self.device, self.calibration = real.device, None
        scores = self._fit(real, synthetic.to(real.device), generator)
        if scores is None:
            scores = self.score(real), self.score(synthetic)
        self._train_scores = scores
        acc = balanced_accuracy(*scores)
        return {"n_real": len(real), "n_synth": len(synthetic), "train_acc": acc}

    @abstractmethod
    def _fit(self, real: torch.Tensor, synthetic: torch.Tensor, generator: torch.Generator
             ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Train on real (label 0) and synthetic (label 1) samples, both on ``self.device``;
        may return the trained model's scores of both ((N_r,), (N_s,)) if it has them, else
        None (they are then computed by :meth:`score`)."""

    @abstractmethod
    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) on ``self.device`` → (B,) float32 logits; called under ``torch.no_grad()``."""

    def describe(self) -> str:
        """A short label for results tables, e.g. ``cnn(width=8, epochs=4)``."""
        return self.name

    # -- scores, calibration, flags ----------------------------------------------------------
    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) float32 scores of x (N, ...), on x's device; higher = more likely synthetic."""
        if self.device is None:
            raise RuntimeError(f"{self.name}: fit the detector before scoring")
        parts = [self._scores(chunk.to(self.device)).float().to(x.device)
                 for chunk in x.split(self.batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, device=x.device)

    def calibrate(self, real: torch.Tensor, alpha: float) -> Calibration:
        """(After :meth:`fit`.) Set the threshold at false-positive rate α from real images (N, ...) the detector was
        not trained on (:func:`conformal_threshold`)."""
        scores = self.score(real)
        threshold = conformal_threshold(scores, alpha)
        self.calibration = Calibration(threshold, float(alpha), len(real),
                                       float((scores > threshold).double().mean()),
                                       balanced_accuracy(*self._train_scores, threshold))
        return self.calibration

    def flag(self, x: torch.Tensor) -> torch.Tensor:
        """bool (N,) on x's device: score above the calibrated threshold."""
        if self.calibration is None:
            raise RuntimeError(f"{self.name}: calibrate the detector before flagging")
        return self.score(x) > self.calibration.threshold

    def tpr(self, synthetic: dict[str, torch.Tensor]) -> dict[str, float]:
        """{name: fraction of the set flagged} for sets of synthetic samples (N, ...): the
        detector's true-positive rate on each at the calibrated α (e.g. samples of a model family
        it was not trained on: the generalisation question)."""
        return {name: float(self.flag(x).double().mean()) if len(x) else math.nan
                for name, x in synthetic.items()}
