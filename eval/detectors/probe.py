"""``probe``: a frozen feature extractor + a linear probe (logistic regression), UnivFD's recipe
(Ojha et al. 2023: frozen CLIP features and a linear classifier generalise to generators never
trained on) with the extractors of :mod:`eval.features` (random CNN, LeNet, DINOv2, ...).

Features f (N, d) are extracted once (float32, batched), standardised with the training set's
mean and standard deviation, and the probe minimises, in float64 and full batch,

    L(w, b) = ½ mean_real ℓ(0, z·w + b) + ½ mean_synth ℓ(1, z·w + b) + (λ/2) ‖w‖²

(ℓ the logistic loss; each class weighs ½; the bias is not penalised) with L-BFGS and a
strong-Wolfe line search. L is strictly convex, so the optimum is unique: it is sklearn's
``LogisticRegression(C=1/(nλ), class_weight="balanced")`` on the same standardised features
(tests/eval/test_detectors.py compares them). The score is the logit z·w + b.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from eval.detectors.base import SyntheticDetector
from eval.features.base import FeatureExtractor

__all__ = ["ProbeDetectorConfig", "LinearProbeDetector"]


@dataclass
class ProbeDetectorConfig:
    """Settings of :class:`LinearProbeDetector` (``filter.probe`` in
    configs/filter/classifier.yaml; the features are chosen in ``filter.features``).

    Attributes:
        weight_decay: the L2 penalty λ on the weights (of the mean class-balanced loss).
        max_iter: L-BFGS iterations at most.
        tolerance: stop when the gradient's largest entry is below it.
    """

    weight_decay: float = 0.01
    max_iter: int = 200
    tolerance: float = 1e-7


class LinearProbeDetector(SyntheticDetector):
    """Logistic regression on the frozen features of ``extractor``.

    Args:
        extractor: any :class:`~eval.features.base.FeatureExtractor` (never trained here).
        config: the probe's settings (None: the defaults).
        batch_size: images per feature-extraction batch.
    """

    name = "probe"

    def __init__(self, extractor: FeatureExtractor, config: Optional[ProbeDetectorConfig] = None,
                 batch_size: int = 512):
        super().__init__(batch_size)
        self.extractor = extractor
        self.config = config or ProbeDetectorConfig()
        if float(self.config.weight_decay) < 0 or int(self.config.max_iter) < 1:
            raise ValueError("probe detector: weight_decay must be >= 0 and max_iter >= 1")
        self.mean = self.scale = self.w = self.b = None
        self.iterations = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) → (N, d) float64 features on ``self.device``."""
        return self.extractor.extract(x, batch_size=self.batch_size,
                                      device=self.device).to(self.device, torch.float64)

    def _fit(self, real: torch.Tensor, synthetic: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(torch.cat([real, synthetic]))
        y = torch.cat([torch.zeros(len(real)), torch.ones(len(synthetic))]).to(f)
        n = len(f)
        weight = torch.where(y > 0, n / (2 * len(synthetic)), n / (2 * len(real)))
        self.mean = f.mean(0)
        self.scale = f.std(0).clamp_min(1e-8)
        z = (f - self.mean) / self.scale
        w = torch.zeros(z.shape[1], dtype=torch.float64, device=z.device, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
        lam = float(self.config.weight_decay)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=int(self.config.max_iter),
                                tolerance_grad=float(self.config.tolerance),
                                tolerance_change=1e-12, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = (F.binary_cross_entropy_with_logits(z @ w + b, y, weight=weight)
                    + 0.5 * lam * (w * w).sum())
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.iterations = int(opt.state[w].get("n_iter", 0))   # L-BFGS keeps it on the first parameter
        self.w, self.b = w.detach(), b.detach()
        scores = (z @ self.w + self.b).float()           # the training features, not re-extracted
        return scores[:len(real)], scores[len(real):]

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.features(x) - self.mean) / self.scale
        return (z @ self.w + self.b).float()

    def describe(self) -> str:
        return f"probe({self.extractor.describe()}, λ={self.config.weight_decay:g})"
