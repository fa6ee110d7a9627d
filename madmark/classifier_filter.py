"""``filter=classifier``: a learned real-vs-synthetic detector (:mod:`eval.detectors`) as the
loop's filter, in place of the watermark detector (MAD's "other methods" of identifying
synthetic data). It needs no watermark, and works with one.

What the detector of generation t trains on, exactly:

- **real** (label 0): the run's *reference split*, never the loop's train split the pool's real
  samples come from. The split is put in a seeded random order (stream (seed, 0,
  "filter-split"); a split stored in class order would otherwise put different digits in the two
  parts); the last ``round(filter.calib_fraction × N_ref)`` images calibrate the threshold and are
  never trained on, the first ``N_ref − n_calib`` are trained on.
- **synthetic** (label 1): *held-out draws* of earlier generations' models. Right after S_t, the
  engine draws ``filter.n_draw`` further samples from model_t (t < T) with their own stream
  (seed, t, "filter-train") and the same bias λ; they are never pooled, evaluated or marked, and
  are stored in checkpoint g<t> (``filter_train``) so a resumed run trains on the same ones. At
  generation t ≥ 2 the detector is trained from scratch on the draw of generation t − 1
  (``filter.train_on=previous``, the default) or on the draws of generations 1..t − 1 together
  (``train_on=all``). The pool's synthetic samples come from the same models but are other
  samples; in an accumulating loop they also come from generations it was not trained on.

The pool being judged, its real samples and its provenance never reach the detector. Its
threshold is the conformal (1 − α) quantile of its scores on the calibration images
(:func:`eval.detectors.conformal_threshold`), so a real image is flagged with probability ≤ α,
as with the watermark detector. At generation 1 no model has drawn anything: the filter passes the
pool through and its row says ``filter_trained=False``. Fewer earlier synthetic samples than
``filter.min_train`` stop the run at that generation (finished generations kept).

The row gets the watermark filter's columns (loops.stages.FILTER_COLUMNS, measured by the same
FilterStage against provenance), then :data:`COLUMNS`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from eval.detectors import (CNNDetector, CNNDetectorConfig, LinearProbeDetector,
                            ProbeDetectorConfig, SyntheticDetector, min_calibration)
from loops.errors import LoopError
from loops.stages import FilterStage, HeldOutDraw
from madcore.columns import Column
from madcore.errors import MadmarkError
from madcore.rng import generator
from madmark.data.base import Splits

KINDS = ("cnn", "probe")
TRAIN_ON = ("previous", "all")

_CFG = "the run's filter config (filter=classifier)"
_TRAIN = ("the detector's training sets: the reference split's training part (real) and the "
          "held-out draws of earlier generations' models (synthetic); never the pool")
_CALIB = "the reference split's calibration part (real images the detector was not trained on)"
#: the columns the classifier filter adds after loops.stages.FILTER_COLUMNS, in order
COLUMNS = (
    Column("filter_kind", "the classifier filter's detector: cnn (trained from scratch) or "
           "probe (frozen features + logistic regression)", "text", _CFG),
    Column("filter_detector", "the detector and its settings, e.g. cnn(width=8, epochs=3)",
           "text", _CFG),
    Column("filter_trained", "whether a detector judged the pool (False at generation 1: no "
           "synthetic sample exists yet, every pool sample is kept)", "boolean (True/False)",
           _CFG),
    Column("detector_train_n_real", "real images the detector was trained on (0 when untrained)",
           "count", _TRAIN),
    Column("detector_train_n_synth", "synthetic samples the detector was trained on (0 when "
           "untrained)", "count", _TRAIN),
    Column("detector_train_from", "which generations' held-out draws it was trained on, e.g. g1 "
           "or g1-g3 (empty when untrained)", "text", _TRAIN),
    Column("detector_train_acc", "balanced accuracy on its training sets at the calibrated "
           "threshold (NaN when untrained)", "fraction in [0, 1]", _TRAIN),
    Column("detector_calib_n", "real images its threshold was calibrated on (0 when untrained)",
           "count", _CALIB),
    Column("detector_threshold", "score above which a sample is flagged (NaN when untrained)",
           "logit", _CALIB),
    Column("detector_calib_fpr", "fraction of the calibration images above the threshold: at "
           "most α by construction (NaN when untrained)", "fraction in [0, 1]", _CALIB),
)


def reference_parts(reference: torch.Tensor, n_calib: int,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training part (N_ref − n_calib, ...), calibration part (n_calib, ...)) of the reference
    split (N_ref, ...), disjoint, in the seeded random order of stream (seed, 0, "filter-split")."""
    order = torch.randperm(len(reference), generator=generator(seed, 0, "filter-split"))
    shuffled = reference[order.to(reference.device)]
    return shuffled[:len(reference) - n_calib], shuffled[len(reference) - n_calib:]


class ClassifierFilter:
    """The classifier filter of one run: held-out draws in, a detector per generation out.

    Args:
        make_detector: builds a new, untrained detector (called once per generation t ≥ 2).
        kind: "cnn" or "probe" (for the row).
        reference: (N_ref, ...) the run's held-out real reference split.
        n_calib: reference images kept to calibrate the threshold (the rest are trained on).
        alpha: false-positive rate of the threshold.
        n_draw: samples drawn from each generation's model for training.
        min_train: fewest synthetic training samples; fewer stop the run at that generation.
        train_on: "previous" (the draw of generation t − 1) or "all" (generations 1..t − 1).
        seed: the run seed (the split's and the training's random streams).
        device: where the detector trains and scores.
    """

    def __init__(self, make_detector: Callable[[], SyntheticDetector], kind: str,
                 reference: torch.Tensor, n_calib: int, alpha: float, n_draw: int,
                 min_train: int, train_on: str, seed: int, device: torch.device):
        self.real_train, self.real_calib = reference_parts(reference.to(device), n_calib, seed)
        self.make_detector, self.kind = make_detector, kind
        self.alpha, self.n_draw, self.min_train = alpha, n_draw, min_train
        self.train_on, self.seed, self.device = train_on, seed, device
        self.draws: dict[int, torch.Tensor] = {}
        self._columns: dict[int, dict] = {}
        self._described = make_detector().describe()

    def remember(self, t: int, x: torch.Tensor) -> None:
        """Keep generation t's held-out draw x (n_draw, ...) (from the engine, or a checkpoint)."""
        self.draws[t] = x.to(self.device)

    def stage(self, min_pool: int) -> FilterStage:
        """The engine's filter stage: this filter's flags, columns and held-out draws."""
        return FilterStage(self.flag, min_pool=min_pool, alpha=self.alpha, columns=self.columns,
                           draw=HeldOutDraw(self.n_draw, self.remember))

    def training_set(self, t: int) -> tuple[torch.Tensor, str]:
        """Generation t's synthetic training samples (n, ...) and which draws they are."""
        wanted = [t - 1] if self.train_on == "previous" else list(range(1, t))
        have = [g for g in wanted if g in self.draws]
        x = (torch.cat([self.draws[g] for g in have]) if have
             else self.real_train.new_zeros((0, *self.real_train.shape[1:])))
        which = f"g{wanted[0]}" if len(wanted) == 1 else f"g{wanted[0]}-g{wanted[-1]}"
        if len(x) < self.min_train:
            missing = [g for g in wanted if g not in self.draws]
            why = (f" (no held-out draw of generation{'s' * (len(missing) > 1)} "
                   f"{', '.join(map(str, missing))} in the run)" if missing else "")
            fix = (f"recompute from generation {missing[0]} (resume=<run_dir> "
                   f"resume_from={missing[0]}), whose checkpoint lacks its draw" if missing else
                   f"set filter.n_draw to at least {self.min_train} (samples drawn from each "
                   "generation's model for the detector), or lower filter.min_train")
            raise LoopError(
                f"generation {t}: the classifier filter has {len(x)} synthetic samples to train "
                f"on (held-out draws {which}){why}, fewer than filter.min_train={self.min_train}",
                fix)
        return x, which

    def flag(self, t: int, x: torch.Tensor) -> torch.Tensor:
        """bool (N,) for generation t's pool x (N, ...): nothing at t = 1, else the flags of a
        detector trained and calibrated for t (see the module docstring)."""
        if t == 1:
            self._columns[t] = self._untrained()
            return torch.zeros(len(x), dtype=torch.bool, device=x.device)
        synthetic, which = self.training_set(t)
        detector = self.make_detector()
        info = detector.fit(self.real_train, synthetic, generator(self.seed, t, "filter-detector"))
        cal = detector.calibrate(self.real_calib, self.alpha)
        self._columns[t] = {
            **self._untrained(), "filter_trained": True,
            "detector_train_n_real": info["n_real"], "detector_train_n_synth": info["n_synth"],
            "detector_train_from": which, "detector_train_acc": cal.train_acc,
            "detector_calib_n": cal.n, "detector_threshold": cal.threshold,
            "detector_calib_fpr": cal.fpr}
        return detector.flag(x.to(self.device)).to(x.device)

    def _untrained(self) -> dict:
        return {"filter_kind": self.kind, "filter_detector": self._described,
                "filter_trained": False, "detector_train_n_real": 0, "detector_train_n_synth": 0,
                "detector_train_from": "", "detector_train_acc": math.nan,
                "detector_calib_n": 0, "detector_threshold": math.nan,
                "detector_calib_fpr": math.nan}

    def columns(self, t: int) -> dict:
        """Generation t's :data:`COLUMNS` (after :meth:`flag` ran for t)."""
        return self._columns[t]


def _check(ok: bool, problem: str, fix: str) -> None:
    if not ok:
        raise MadmarkError(problem, fix)


def make_detector_factory(cfg: DictConfig, splits: Splits, data_name: str,
                          device: torch.device) -> Callable[[], SyntheticDetector]:
    """``make() -> detector`` for ``filter.kind``: a CNN (filter.cnn) or a linear probe
    (filter.probe) on the frozen features ``filter.features`` (built once, shared)."""
    batch_size = int(cfg.batch_size)
    if cfg.kind == "cnn":
        _check(splits.kind == "image", "filter.kind=cnn needs image data, this data is vectors",
               "set filter.kind=probe (raw features) or filter=none")
        settings = CNNDetectorConfig(**OmegaConf.to_container(cfg.cnn, resolve=True))
        CNNDetector(settings)                          # refuses bad settings before the run
        return lambda: CNNDetector(settings, batch_size=batch_size)
    from madmark.metrics import make_extractor        # the eval.features builders, reused

    try:
        features = OmegaConf.to_container(cfg.features, resolve=True)   # ${seed}, ${eval...}
        extractor = make_extractor(OmegaConf.create({"features": features}), splits, data_name,
                                   device)
    except MadmarkError as error:        # its messages name eval.features: these are filter's
        raise MadmarkError(error.problem.replace("eval.features", "filter.features"),
                           error.fix.replace("eval.features", "filter.features")) from error
    settings = ProbeDetectorConfig(**OmegaConf.to_container(cfg.probe, resolve=True))
    LinearProbeDetector(extractor, settings)
    return lambda: LinearProbeDetector(extractor, settings, batch_size=batch_size)


def build_classifier_filter(cfg: DictConfig, splits: Splits, data_name: str, seed: int,
                            device: torch.device) -> ClassifierFilter:
    """The run's classifier filter from ``cfg`` (the ``filter`` block of
    configs/filter/classifier.yaml); refuses bad settings with a one-line MadmarkError."""
    _check(cfg.kind in KINDS, f"filter.kind={cfg.kind} is not one of {', '.join(KINDS)}",
           "set filter.kind=cnn or filter.kind=probe")
    _check(cfg.train_on in TRAIN_ON, f"filter.train_on={cfg.train_on} is not one of "
           f"{', '.join(TRAIN_ON)}", "set filter.train_on=previous or filter.train_on=all")
    alpha = float(cfg.alpha)
    _check(0 < alpha < 1, f"filter.alpha={alpha} is outside (0, 1)",
           "set filter.alpha to a false-positive rate such as 0.01")
    fraction = float(cfg.calib_fraction)
    _check(0 < fraction < 1, f"filter.calib_fraction={fraction} is outside (0, 1)",
           "set filter.calib_fraction=0.5")
    for key in ("n_draw", "min_train", "batch_size"):
        _check(int(cfg[key]) >= 1, f"filter.{key}={cfg[key]} must be at least 1",
               f"set filter.{key} to a positive count")
    n_ref = len(splits.reference)
    n_calib = int(round(fraction * n_ref))
    need = min_calibration(alpha)
    _check(n_calib >= need and n_ref - n_calib >= 1,
           f"filter.alpha={alpha} needs at least {need} calibration images and the detector "
           f"some to train on, but filter.calib_fraction={fraction} of the {n_ref}-image "
           f"reference split (data {data_name}) gives {n_calib} to calibrate and "
           f"{n_ref - n_calib} to train",
           "use a larger reference split (data.n_reference), another filter.calib_fraction, or "
           "a larger filter.alpha")
    make = make_detector_factory(cfg, splits, data_name, device)
    return ClassifierFilter(make, str(cfg.kind), splits.reference, n_calib, alpha,
                            int(cfg.n_draw), int(cfg.min_train), str(cfg.train_on), seed, device)
