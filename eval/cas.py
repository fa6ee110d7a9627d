"""Classification accuracy score (CAS; Ravuri & Vinyals 2019): what S_t is worth to a downstream
classifier. A :class:`~eval.features.lenet.LeNet` is trained (by
:func:`~eval.features.lenet_train.train_lenet`) on labelled samples only and tested on a real,
held-out labelled split; its top-1 accuracy is the score. FID and IS do not predict it
(ImageNet-256 top-1: real 73.1 %, VQ-VAE-2 54.8 %, BigGAN-deep 42.7 %).

    cas = ClassificationAccuracyScore(real_x, real_y, test_x, test_y, labeller=lenet_labeller(net))
    row.update(cas(t, samples, labels=labels))      # labels: (N,) of a conditional model, or None

Images are ``(N, C, H, W)`` float in [0, 1]; labels int64 ``(N,)`` classes 0..K-1.

Per generation (:data:`COLUMNS`), with n = ``cas_n_train`` samples of S_t (its first n):

- ``cas``: trained on those n samples with their labels — the conditional model's own labels when
  it has them (``cas_labels = "model"``), else the ``labeller``'s (``cas_labels`` names it, e.g.
  ``"lenet"``: the run's reference LeNet, trained on the real train split);
- ``cas_real``: the same classifier (architecture and settings) trained on n random real train
  images with their true labels: the ceiling. It does not depend on t, so it is computed once per
  evaluator and cached;
- ``cas_augmented``: the naive augmentation score: trained on those n real images + the n
  samples of S_t (2n images).

All three are tested on the same ``cas_n_test`` real held-out images (a random subset of the test
split, or all of it). Deterministic given ``seed``: the real and test subsets and each classifier's
init, shuffling and augmentation derive from (seed, generation, purpose) (:mod:`madcore.rng`).

Cost: training is O(epochs · n) LeNet steps (the augmented score twice that), testing one forward
pass over the test images per classifier, labelling one over n samples. Measured by
benchmarks/cas_speed.py on 2 shared CPU cores (load 5-7) for the default run (mnist5k, PCA + GMM,
4,000 samples per generation; n = 1,000, 2 epochs, batch 32, widths (6, 16)): 1.5-2 s per
generation (4 s in generation 1, which also trains cas_real) against 10-25 s generations, i.e.
+13-18 % of a generation by the evaluator's own seconds; with the augmented score +37 %.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from eval.features.lenet import LeNet
from eval.features.lenet_train import train_lenet
from madcore.columns import Column
from madcore.rng import derive_seed, generator

__all__ = ["ClassificationAccuracyScore", "classification_accuracy", "lenet_labeller", "Labeller",
           "COLUMNS"]

#: ``labeller(x) -> labels``: (N, C, H, W) images in [0, 1] → (N,) int64 CPU class labels
Labeller = Callable[[torch.Tensor], torch.Tensor]

_TEST = "the real held-out test split (the reference split, never trained on; cas_n_test images)"
_SET = "the run's eval.cas_* settings"
#: the columns :class:`ClassificationAccuracyScore` writes, in order
COLUMNS = (
    Column("cas", "classification accuracy score: top-1 accuracy of a LeNet trained only on "
           "cas_n_train samples of S_t with their labels (cas_labels)", "fraction in [0, 1]",
           "trained on S_t (unmarked samples), tested on " + _TEST),
    Column("cas_real", "top-1 accuracy of the same classifier trained on cas_n_train real train "
           "images with their true labels: the ceiling of cas (computed once per run)",
           "fraction in [0, 1]", "trained on the real train split, tested on " + _TEST),
    Column("cas_augmented", "naive augmentation score: top-1 accuracy of the same classifier "
           "trained on cas_real's real images plus cas's samples of S_t (2 × cas_n_train)",
           "fraction in [0, 1]", "trained on real train + S_t, tested on " + _TEST,
           when="eval.cas_augmented"),
    Column("cas_labels", "where the labels of S_t come from: model (the class-conditional model's "
           "own labels) or lenet (predicted by the run's reference LeNet, trained on the real "
           "train split)", "text", "S_t and the run's model"),
    Column("cas_n_train", "samples of S_t the cas classifier trains on (and real images cas_real "
           "trains on)", "count", _SET),
    Column("cas_n_test", "real held-out images the CAS classifiers are tested on", "count", _SET),
    Column("cas_epochs", "training epochs of each CAS classifier", "count", _SET),
)


def lenet_labeller(model: LeNet, batch_size: int = 256) -> Labeller:
    """Labels by a trained LeNet's classifier head: argmax of its logits, ``batch_size`` at a time
    on the model's device; (N, C, H, W) in [0, 1] → (N,) int64 CPU."""
    model.eval()
    device = next(model.parameters()).device

    @torch.no_grad()
    def label(x: torch.Tensor) -> torch.Tensor:
        out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu()
               for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    return label


def classification_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                            test_y: torch.Tensor, *, seed: int, epochs: int, batch_size: int,
                            lr: float, channels: tuple[int, int], augment: bool = True,
                            device: str = "cpu") -> float:
    """Top-1 accuracy in [0, 1] on (test_x (M, C, H, W), test_y (M,)) of a LeNet trained from
    scratch on (train_x (N, C, H, W), train_y (N,)) only, with ``seed`` (an int). Classes absent
    from ``train_y`` are never predicted (they count as misses)."""
    _, info = train_lenet(train_x, train_y, epochs=epochs, batch_size=batch_size, lr=lr,
                          seed=seed, device=device, val_x=test_x, val_y=test_y,
                          channels=channels, augment_data=augment, score_train=False)
    return float(info["val_accuracy"])


class ClassificationAccuracyScore:
    """Evaluator: ``cas(t, samples, model=None, labels=None) -> dict`` of :data:`COLUMNS`.

    Args:
        real_x, real_y: (N_train, C, H, W) real TRAIN images in [0, 1] and (N_train,) labels
            (cas_real and the real half of cas_augmented are drawn from them).
        test_x, test_y: (N_test, C, H, W) real held-out images and (N_test,) labels (never trained
            on by anything here or by the loop).
        labeller: labels samples without labels (unconditional models), e.g.
            :func:`lenet_labeller`; None: every call must bring ``labels``.
        labeller_name: what ``cas_labels`` says when the labeller labelled S_t.
        n_train: samples of S_t per classifier (capped at len(S_t) and N_train); None = all.
        n_test: test images (a random subset); None = all of them.
        epochs, batch_size, lr, channels, augment: the LeNet's training settings
            (:func:`~eval.features.lenet_train.train_lenet`); channels = its conv widths.
        augmented: also compute cas_augmented (its classifier trains on 2n images: it triples
            the cost).
        seed: run seed; every subset and classifier derives from it.
        device: where the classifiers train.
    """

    def __init__(self, real_x: torch.Tensor, real_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, *, labeller: Optional[Labeller] = None,
                 labeller_name: str = "lenet", n_train: Optional[int] = None,
                 n_test: Optional[int] = None, epochs: int = 2, batch_size: int = 32,
                 lr: float = 3e-3, channels: tuple[int, int] = (6, 16), augment: bool = True,
                 augmented: bool = False, seed: int = 0, device: str = "cpu"):
        if len(real_x) != len(real_y) or len(test_x) != len(test_y) or len(test_y) == 0:
            raise ValueError(f"cas: {len(real_x)} train images with {len(real_y)} labels and "
                             f"{len(test_x)} test images with {len(test_y)} labels")
        self.real_x, self.real_y = real_x.cpu(), real_y.long().cpu()
        m = len(test_x) if n_test is None else min(int(n_test), len(test_x))
        pick = torch.randperm(len(test_x), generator=generator(seed, 0, "cas_test"))[:m]
        self.test_x, self.test_y = test_x.cpu()[pick], test_y.long().cpu()[pick]
        self.labeller, self.labeller_name = labeller, labeller_name
        self.n_train, self.augmented, self.seed = n_train, bool(augmented), int(seed)
        self.train = dict(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr),
                          channels=(int(channels[0]), int(channels[1])), augment=bool(augment),
                          device=str(device))
        self._real: dict[int, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, t: int, purpose: str) -> float:
        """Test accuracy of a classifier trained on (x, y), seeded by (seed, t, purpose)."""
        return classification_accuracy(x, y, self.test_x, self.test_y,
                                       seed=derive_seed(self.seed, t, purpose), **self.train)

    def real(self, n: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """n random real train images, their labels and cas_real for n (computed once per n)."""
        if n not in self._real:
            pick = torch.randperm(len(self.real_x), generator=generator(self.seed, 0, "cas_real"))
            x, y = self.real_x[pick[:n]], self.real_y[pick[:n]]
            self._real[n] = (x, y, self.accuracy(x, y, 0, "cas_real"))
        return self._real[n]

    def sizes(self, n_samples: int) -> int:
        """n: samples of S_t (and real images) each classifier trains on."""
        n = min(n_samples, len(self.real_x))
        return n if self.n_train is None else min(int(self.n_train), n)

    def __call__(self, t: int, samples: torch.Tensor, model: Any = None,
                 labels: Optional[torch.Tensor] = None,
                 labels_from: str = "model") -> dict[str, Any]:
        """Columns of generation t; ``samples`` (N, C, H, W) is S_t, ``labels`` (N,) (or at least
        its first n) its labels — from a class-conditional model, or as ``labels_from`` says —
        or None (then the labeller labels S_t and ``cas_labels`` is ``labeller_name``)."""
        n = self.sizes(len(samples))
        x = samples[:n].detach().cpu()
        if labels is not None:
            y, source = labels[:n].long().cpu(), labels_from
        elif self.labeller is not None:
            y, source = self.labeller(x).long().cpu(), self.labeller_name
        else:
            raise ValueError("cas: S_t has no labels and no labeller was given")
        real_x, real_y, ceiling = self.real(n)
        row: dict[str, Any] = {"cas": self.accuracy(x, y, t, "cas"), "cas_real": ceiling}
        if self.augmented:
            row["cas_augmented"] = self.accuracy(torch.cat([real_x, x.to(real_x.dtype)]),
                                                 torch.cat([real_y, y]), t, "cas_augmented")
        row.update({"cas_labels": source, "cas_n_train": n, "cas_n_test": len(self.test_y),
                    "cas_epochs": self.train["epochs"]})
        return row
