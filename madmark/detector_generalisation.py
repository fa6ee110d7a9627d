"""Does a learned synthetic-data detector catch samples of a model it was not trained on? (issue
16's question; CNNDetection and UnivFD's weak point.) Next to it, the watermark detector, which
does not care which model made a marked sample.

    rows = generalisation(reference, real_test, trained_on="pca_gmm", synth_train=x,
                          tests={"pca_gmm": a, "vae_tiny": b}, detectors={"cnn": make_cnn},
                          alpha=0.01, seed=0, watermark=(mark, flag))

The protocol is the classifier filter's (madmark.classifier_filter): the reference split in its
seeded order, its training part (real, label 0) against ``synth_train`` (samples of the model
``trained_on``, label 1), the threshold calibrated at α on the calibration part. Then, on sets the
detector never saw: the TPR on each model's samples (``tests``: fresh samples of the training
model, the in-distribution rate, and of other models or generations), and the FPR on
``real_test`` (real images, e.g. the loop's train split). The watermark row marks each test set
with ``mark`` and counts what ``flag`` catches, and its FPR is ``flag`` on the unmarked real test
images. benchmarks/detector_generalisation.py runs it on mnist5k with PCA+GMM and a VAE.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from eval.detectors import SyntheticDetector
from madcore.rng import generator
from madmark.classifier_filter import reference_parts

#: (mark(x) -> x_w, flag(x) -> bool (N,)) of a watermark at the same α
Watermark = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def generalisation(reference: torch.Tensor, real_test: torch.Tensor, trained_on: str,
                   synth_train: torch.Tensor, tests: dict[str, torch.Tensor],
                   detectors: dict[str, Callable[[], SyntheticDetector]], alpha: float,
                   seed: int = 0, n_calib: Optional[int] = None,
                   watermark: Optional[Watermark] = None) -> list[dict]:
    """One row per detector (and one for the watermark): its TPR at α on each test set and its
    FPR on the real test images.

    Args:
        reference: (N_ref, C, H, W) real images the detectors train and calibrate on.
        real_test: (M, C, H, W) other real images (never trained or calibrated on).
        trained_on: name of the model ``synth_train`` comes from (for the rows).
        synth_train: (n, C, H, W) the detectors' synthetic training samples.
        tests: {model name: (m, C, H, W) its samples}, none of them trained on.
        detectors: {name: make() -> an untrained detector}.
        alpha: false-positive rate of every threshold.
        seed: the reference split's order and the detectors' training stream.
        n_calib: reference images kept to calibrate (default: half).
        watermark: (mark, flag) of a watermark calibrated at α, or None.

    Returns:
        rows of ``detector``, ``describe``, ``trained_on``, ``train_acc`` (balanced, at the
        calibrated threshold; NaN for the watermark),
        ``fpr_real``, ``n_real_test`` and ``tpr_<model>`` per test set.
    """
    n_calib = len(reference) // 2 if n_calib is None else int(n_calib)
    real_train, real_calib = reference_parts(reference, n_calib, seed)
    rows = []
    for name, make in detectors.items():
        det = make()
        det.fit(real_train, synth_train, generator(seed, 1, "generalisation"))
        cal = det.calibrate(real_calib, alpha)
        rows.append({"detector": name, "describe": det.describe(), "trained_on": trained_on,
                     "train_acc": cal.train_acc,
                     "fpr_real": float(det.flag(real_test).double().mean()),
                     "n_real_test": len(real_test),
                     **{f"tpr_{k}": v for k, v in det.tpr(tests).items()}})
    if watermark is not None:
        mark, flag = watermark
        rows.append({"detector": "watermark", "describe": "watermark detector (marked samples)",
                     "trained_on": "-", "train_acc": float("nan"),
                     "fpr_real": float(flag(real_test).double().mean()),
                     "n_real_test": len(real_test),
                     **{f"tpr_{k}": float(flag(mark(x)).double().mean())
                        for k, x in tests.items()}})
    return rows
