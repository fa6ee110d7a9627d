"""Real-vs-synthetic image detectors with a threshold calibrated to a false-positive rate α.

=======  ====================================================================================
kind     what
=======  ====================================================================================
cnn      :class:`CNNDetector`: a small CNN trained from scratch (CNNDetection, scaled down)
probe    :class:`LinearProbeDetector`: frozen :mod:`eval.features` + logistic regression (UnivFD)
=======  ====================================================================================

Each has one config dataclass (:class:`CNNDetectorConfig`, :class:`ProbeDetectorConfig`);
:mod:`eval.detectors.base` has the shared fit / calibrate / flag interface and the conformal
threshold. Tensors in, tensors and numbers out: what the detector trains on is the caller's
choice (madmark.classifier_filter says which for the loop's filter).
"""
from eval.detectors.base import (Calibration, SyntheticDetector, balanced_accuracy,
                                 conformal_rank, conformal_threshold, min_calibration)
from eval.detectors.cnn import CNNDetector, CNNDetectorConfig, SmallCNN
from eval.detectors.probe import LinearProbeDetector, ProbeDetectorConfig

__all__ = ["Calibration", "SyntheticDetector", "balanced_accuracy", "conformal_rank",
           "conformal_threshold", "min_calibration", "CNNDetector", "CNNDetectorConfig",
           "SmallCNN", "LinearProbeDetector", "ProbeDetectorConfig"]
