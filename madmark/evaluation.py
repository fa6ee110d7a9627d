"""Per-generation evaluators the run command attaches to the loop engine."""
from __future__ import annotations

import torch

from eval.gaussian import gaussian_stats
from madcore.columns import Column

_TRUTH = ("the model's closed-form moments (or those of S_t, see moments_from) vs the true "
          "distribution's")
#: the columns of :func:`vector_truth_evaluator`, in order
TRUTH_COLUMNS = (
    Column("w2_to_true", "2-Wasserstein distance W₂ (not squared) between Gaussians with the two "
           "moment pairs", "data units", _TRUTH),
    Column("logdet_cov", "ln det Σ of the fitted covariance", "ln(data units^2D)", _TRUTH),
    Column("trace_cov", "tr Σ of the fitted covariance", "data units²", _TRUTH),
    Column("mean_err", "‖μ − μ_true‖", "data units", _TRUTH),
    Column("moments_from", "where the moments come from: model (closed form) or samples (S_t)",
           "text", _TRUTH),
)
_RAW = "S_t (unmarked samples) vs the reference split, raw values (flattened pixels or vectors)"
#: the columns of :func:`spread_evaluator`, in order
SPREAD_COLUMNS = (
    Column("spread_ratio", "mean per-dimension std of S_t ÷ that of the reference split",
           "ratio (1 = as spread as real data)", _RAW),
    Column("spread_n_reference", "reference samples the std is computed on", "count", _RAW),
)


def sample_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D), float64, of vectors x (N, D)."""
    x = x.double()
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def vector_truth_evaluator(true_mean: torch.Tensor, true_cov: torch.Tensor):
    """Distance of each generation's fitted distribution to the true one (vector data).

    Uses the model's closed-form moments when it has them, else the moments of its samples S_t.
    Columns (:data:`TRUTH_COLUMNS`): w2_to_true (W₂ between Gaussians with those moments),
    logdet_cov, trace_cov, mean_err, moments_from.
    """

    def evaluate(t, samples, model) -> dict:
        moments = model.moments()
        mean, cov = moments if moments is not None else sample_moments(samples)
        stats = gaussian_stats(mean.double().cpu(), cov.double().cpu(),
                               true_mean.double().cpu(), true_cov.double().cpu())
        stats["moments_from"] = "model" if moments is not None else "samples"
        return stats

    return evaluate


def spread_evaluator(reference: torch.Tensor):
    """Diversity proxy on raw values: mean per-dimension std of S_t ÷ that of the real reference.

    Computed on flattened pixels (images) or the vectors themselves; 1 = as spread as real data,
    falling toward 0 as the loop collapses. Columns (:data:`SPREAD_COLUMNS`): spread_ratio,
    spread_n_reference.
    """
    ref_std = reference.flatten(1).double().std(0).mean().item()

    def evaluate(t, samples, model) -> dict:
        std = samples.flatten(1).double().std(0).mean().item()
        return {"spread_ratio": std / ref_std, "spread_n_reference": len(reference)}

    return evaluate
