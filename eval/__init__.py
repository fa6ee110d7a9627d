"""Metrics on tensors: k-NN precision/recall/density/coverage, FID/KID, Gaussian distances,
feature extractors. Imports nothing from ``loops`` or ``madmark``.

``eval.prdc(real, fake, k=5)`` is the function (the module stays importable as ``eval.prdc``).
"""
from .gaussian import frechet_distance, gaussian_stats, logdet, sqrtm_psd, trace, w2_gaussian  # noqa: F401
from .fid import FeatureStats, FrechetDistance, fid, kid  # noqa: F401
from .prdc import RealManifold, prdc  # noqa: F401  (binds eval.prdc to the function)

__all__ = ["prdc", "RealManifold", "FeatureStats", "FrechetDistance", "fid", "frechet_distance",
           "kid", "gaussian_stats", "logdet", "sqrtm_psd", "trace", "w2_gaussian"]
