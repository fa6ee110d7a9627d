"""The run's classification accuracy score (``eval.cas=true``): the evaluator of eval/cas.py built
from the ``eval.cas_*`` settings, the labels it trains on, and the check that the data has them.

    check_cas_data(splits, "mnist5k")                              # before the run starts
    engine.evaluators.append(build_cas(cfg.eval, splits, "mnist5k", device, seed, metrics))

Labels of S_t: a class-conditional model's own (the engine hands them to the evaluator as
``labels``); for an unconditional model, the argmax of the run's reference LeNet's classifier
head — the LeNet of ``eval.features.name=lenet`` (:func:`madmark.metrics.lenet_from_config`:
trained on the real train split, cached). When that LeNet is the run's feature extractor, its
head is applied to the features :class:`~madmark.metrics.GenerationMetrics` already extracted
from S_t (no second forward pass); otherwise the LeNet is loaded or trained the first time an
unconditional model's S_t needs labels. The classifiers are tested on the reference split (held
out: never trained on, by the loop or by CAS).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from omegaconf import DictConfig

from eval.cas import ClassificationAccuracyScore, lenet_labeller
from eval.features.lenet import LeNet, LeNetExtractor
from madcore import dist
from madcore.errors import MadmarkError
from madmark.data.base import Splits
from madmark.metrics import GenerationMetrics, lenet_from_config

_FIX = "set eval.cas=false, or use a labelled image source (e.g. data=mnist5k or data=digits)"


def check_cas_data(splits: Splits, data_name: str) -> None:
    """Refuse ``eval.cas=true`` on data without what CAS needs: images (the classifier is a LeNet)
    and class labels on both splits (the train split's train the reference LeNet that labels an
    unconditional model's samples and give cas_real; the reference split's test the classifiers),
    with at least 2 classes."""
    if splits.kind != "image":
        raise MadmarkError(f"eval.cas=true trains a LeNet on images, but data '{data_name}' is "
                           f"{splits.kind}s", _FIX)
    missing = [name for name, y in (("train", splits.train_labels),
                                    ("reference", splits.reference_labels)) if y is None]
    if missing:
        raise MadmarkError(f"eval.cas=true needs class labels, but data '{data_name}' has none on "
                           f"its {' and '.join(missing)} split (no labels to test on, and no "
                           "reference LeNet to label S_t with)", _FIX)
    classes = len(torch.unique(splits.train_labels))
    if classes < 2:
        raise MadmarkError(f"eval.cas=true needs at least 2 classes, but data '{data_name}' has "
                           f"{classes}", _FIX)


class RunCAS:
    """Evaluator ``(t, samples, model, labels=None) -> dict``: :class:`ClassificationAccuracyScore`
    of S_t with the model's labels, else the reference LeNet's (see the module docstring).

    Args:
        cas: the score (its own labeller is not used).
        reference_lenet: builds the run's reference :class:`LeNet` (called at most once).
        metrics: the run's per-generation metrics, whose LeNet features of S_t are reused when
            its extractor is that LeNet; None: label with a forward pass of the LeNet.
    """

    def __init__(self, cas: ClassificationAccuracyScore, reference_lenet,
                 metrics: Optional[GenerationMetrics] = None):
        self.cas, self._build, self.metrics = cas, reference_lenet, metrics
        extractor = getattr(metrics, "extractor", None)
        self._lenet: Optional[LeNet] = (extractor.model if isinstance(extractor, LeNetExtractor)
                                        else None)
        self._reuse = self._lenet is not None

    def lenet(self) -> LeNet:
        if self._lenet is None:
            self._lenet = self._build()
        return self._lenet

    @torch.no_grad()
    def lenet_labels(self, t: int, x: torch.Tensor) -> torch.Tensor:
        """(n,) int64 CPU labels of x (n, C, H, W) = S_t[:n] by the reference LeNet's head."""
        features = self.metrics.sample_features(t) if self._reuse else None
        if features is not None and len(features) >= len(x):
            head = self.lenet().fc2
            return head(features[:len(x)].to(head.weight.device)).argmax(1).cpu()
        return lenet_labeller(self.lenet())(x)

    def __call__(self, t: int, samples: torch.Tensor, model: Any = None,
                 labels: Optional[torch.Tensor] = None) -> dict[str, Any]:
        if labels is not None:
            return self.cas(t, samples, model, labels=labels, labels_from="model")
        n = self.cas.sizes(len(samples))
        return self.cas(t, samples, model, labels=self.lenet_labels(t, samples[:n]),
                        labels_from="lenet")


def build_cas(cfg: DictConfig, splits: Splits, data_name: str, device: torch.device, seed: int,
              metrics: Optional[GenerationMetrics] = None) -> RunCAS:
    """The CAS evaluator of a run (``cfg``: the ``eval`` block; ``seed``: the run seed;
    ``metrics``: the run's GenerationMetrics, if any); call :func:`check_cas_data` first."""
    def reference_lenet() -> LeNet:
        with dist.main_first():                  # the cache is filled once, by rank 0
            return lenet_from_config(cfg.features, splits, data_name, device).model

    cas = ClassificationAccuracyScore(
        splits.train, splits.train_labels, splits.reference, splits.reference_labels,
        n_train=cfg.cas_n_train, n_test=cfg.cas_n_test, epochs=int(cfg.cas_epochs),
        batch_size=int(cfg.cas_batch_size), lr=float(cfg.cas_lr),
        channels=tuple(int(c) for c in cfg.cas_channels), augmented=bool(cfg.cas_augmented),
        seed=int(seed), device=str(device))
    return RunCAS(cas, reference_lenet, metrics)
