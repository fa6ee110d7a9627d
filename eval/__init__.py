from .gaussian import gaussian_stats, logdet, sqrtm_psd, trace, w2_gaussian  # noqa: F401
