"""The two optional stages of a generation that touch watermarks (DESIGN.md, "One generation").

    pool_t = filter(pool_t)          FilterStage: drop what a detector flags, before fitting
    ...
    S_t    = watermark(S_t)          WatermarkStage: mark the samples that enter later pools

Both take plain callables, so the engine knows nothing of keys, methods or detectors
(``madmark.watermarking`` and ``madmark.classifier_filter`` build them from the run's config). The
filter sees pixels only; the pool's provenance is used afterwards to *measure* it, never to decide.
A learned detector may also ask for a :class:`HeldOutDraw`: extra samples of each generation's
model, drawn by the engine for it alone (never pooled), to train on in later generations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from madcore.columns import Column
from madcore.quality import pooled_psnr
from loops.errors import LoopError
from loops.pool import Pool

#: ``mark(t, x) -> x_w``: marks images x (N, C, H, W) of generation t; same shape, in [0, 1].
MarkFn = Callable[[int, torch.Tensor], torch.Tensor]
#: ``flag(t, x) -> flagged``: bool (N,) for the pool x (N, C, H, W) of generation t.
FlagFn = Callable[[int, torch.Tensor], torch.Tensor]
#: ``columns(t) -> row columns`` of the detector itself for generation t, after :meth:`flag` ran
ColumnsFn = Callable[[int], dict[str, Any]]

_MARKED = "the pooled part of S_t: marked vs unmarked, before it enters later pools"
#: the columns :class:`WatermarkStage` writes, in order
WATERMARK_COLUMNS = (
    Column("wm_psnr", "PSNR of the marked samples against their unmarked originals, of the MSE "
           "pooled over every pixel", "dB", _MARKED),
    Column("n_marked_new", "samples the mark changed (fewer than the pooled samples when the "
           "marking skips samples that already carry the mark)", "count", _MARKED),
    Column("wm_detect_rate", "fraction of the marked samples that the detector of the key they "
           "were marked with flags at wm_alpha (with a key per generation: generation t's)",
           "fraction in [0, 1]", _MARKED, when="a detector is given (madmark run: always)"),
)
_POOL = "generation t's pool before the filter (the detector sees pixels; provenance measures it)"
#: the columns :class:`FilterStage` writes, in order
FILTER_COLUMNS = (
    Column("filter_n_in", "samples the filter scanned", "count", _POOL),
    Column("filter_real_dropped", "real samples flagged and dropped", "count", _POOL),
    Column("filter_real_drop_rate", "filter_real_dropped ÷ real samples: the empirical "
           "false-positive rate (NaN without real samples)", "fraction in [0, 1]", _POOL),
    Column("filter_synth_caught", "synthetic samples flagged and dropped", "count", _POOL),
    Column("filter_synth_missed", "synthetic samples kept", "count", _POOL),
    Column("filter_tpr", "filter_synth_caught ÷ synthetic samples: the true-positive rate (NaN "
           "without synthetic samples)", "fraction in [0, 1]", _POOL),
    Column("filter_marked_n", "marked samples in the pool", "count", _POOL),
    Column("filter_marked_caught", "marked samples flagged and dropped", "count", _POOL),
    Column("real_fraction_before", "real samples ÷ pool size before the filter (NaN for an empty "
           "pool)", "fraction in [0, 1]", _POOL),
)


@dataclass
class WatermarkStage:
    """Marks the synthetic samples S_t before they enter later pools.

    Attributes:
        mark: the marking callable (method and key per run or per generation).
        method: a name for the results row (``wm_method``).
        detect: optional ``detect(t, x_w) -> flagged`` (N,) bool with the key generation t was
            marked with; gives the column ``wm_detect_rate``.
    """

    mark: MarkFn
    method: str = "watermark"
    detect: Optional[FlagFn] = None

    def __call__(self, t: int, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Marked copy of x (N, C, H, W) and the row columns ``wm_psnr`` (dB) and
        ``n_marked_new`` (samples the mark changed: fewer than N when the marking callable skips
        samples that already carry the mark), and with a ``detect`` callable ``wm_detect_rate``
        (the fraction of the marked copy it flags; NaN for N = 0)."""
        if x.ndim != 4:
            raise LoopError(f"the watermark stage needs images (N, C, H, W), got shape "
                            f"{tuple(x.shape)}", "use image data (e.g. data=mnist5k) or watermark=none")
        marked = self.mark(t, x)
        if marked.shape != x.shape:
            raise LoopError(f"watermark method {self.method} returned shape {tuple(marked.shape)} "
                            f"for images {tuple(x.shape)}", "check the method's image-size limits")
        changed = int((marked != x).flatten(1).any(1).sum())
        stats = {"wm_psnr": pooled_psnr(marked, x), "n_marked_new": changed}
        if self.detect is not None:
            flagged = self.detect(t, marked).bool()
            stats["wm_detect_rate"] = float(flagged.double().mean()) if len(x) else math.nan
        return marked, stats


#: ``sample_marked(t, model, n, bias, generator) -> x_w``: n samples of generation t's model drawn
#: with the watermark applied while sampling (text: a keyed token chooser in the logits)
SampleMarkedFn = Callable[[int, Any, int, float, torch.Generator], torch.Tensor]

_DRAWN = ("the pooled part of S_t: drawn again from model_t with the watermark in its sampler "
          "(the same random stream as S_t)")
#: the columns :class:`SamplingWatermarkStage` writes, in order (two shared with the image stage)
SAMPLING_WATERMARK_COLUMNS = (
    WATERMARK_COLUMNS[1],
    Column("wm_changed_fraction", "fraction of the marked samples' tokens that differ from the "
           "unmarked S_t drawn from the same random stream (0 when the mark changes nothing)",
           "fraction in [0, 1]", _DRAWN),
    WATERMARK_COLUMNS[2],
)


@dataclass
class SamplingWatermarkStage:
    """Marks at generation time, as LLM watermarks do: the pooled part of S_t is drawn again from
    model_t with the watermark in its sampler, from the same random stream as the unmarked S_t
    (which the evaluators measure), so a mark that changes nothing reproduces S_t exactly.

    Attributes:
        sample_marked: draws n marked samples of model_t (:data:`SampleMarkedFn`).
        method: a name for the results row (``wm_method``).
        detect: optional ``detect(t, x_w) -> flagged`` (N,) bool; gives ``wm_detect_rate``.
    """

    sample_marked: SampleMarkedFn
    method: str = "watermark"
    detect: Optional[FlagFn] = None

    def __call__(self, t: int, x: torch.Tensor, model: Any, bias: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Marked samples with the shape of ``x`` (the unmarked pooled part of S_t, (N, ...)),
        drawn by ``sample_marked`` from ``generator``, and the row columns
        :data:`SAMPLING_WATERMARK_COLUMNS`."""
        marked = self.sample_marked(t, model, len(x), bias, generator)
        if marked.shape != x.shape:
            raise LoopError(f"watermark method {self.method} drew shape {tuple(marked.shape)} "
                            f"where S_t has {tuple(x.shape)}", "check the method's settings")
        differs = (marked != x).flatten(1).any(1) if x.numel() else torch.zeros(0, dtype=bool)
        stats = {"n_marked_new": int(differs.sum()),
                 "wm_changed_fraction": (float((marked != x).double().mean()) if x.numel()
                                         else math.nan)}
        if self.detect is not None:
            flagged = self.detect(t, marked).bool()
            stats["wm_detect_rate"] = float(flagged.double().mean()) if len(x) else math.nan
        return marked, stats


@dataclass
class HeldOutDraw:
    """Samples of every generation's model drawn for a learned filter only (the classifier
    filter's synthetic training set): right after S_t (t < T: no generation after the last one
    needs its draw) the engine draws ``n`` samples from model_t with their own random stream
    (seed, t, "filter-train") and S_t's bias, stores them in checkpoint g<t> (``filter_train``),
    and hands them to ``receive`` — again from the checkpoint when a run resumes. They never enter
    a pool, an evaluator or the watermark stage.

    Attributes:
        n: samples per generation.
        receive: ``receive(t, x)`` with generation t's draw x (n, ...) on the engine's device.
    """

    n: int
    receive: Callable[[int, torch.Tensor], None]


@dataclass
class FilterStage:
    """Drops the pool samples a detector flags, and measures it against provenance.

    Attributes:
        flag: the detection callable (pixels only).
        min_pool: fewest samples left to fit a model; fewer stops the run with a clear error.
        alpha: the detector's target false-positive rate (recorded, and named in errors).
        columns: the detector's own row columns for generation t, written after
            :data:`FILTER_COLUMNS` (None: none).
        draw: held-out samples the detector needs from each generation's model (None: none).
    """

    flag: FlagFn
    min_pool: int = 2
    alpha: float = 0.01
    columns: Optional[ColumnsFn] = None
    draw: Optional[HeldOutDraw] = None

    def __call__(self, t: int, pool: Pool) -> tuple[Pool, dict[str, float | int]]:
        """The kept pool and the row columns:

        filter_n_in, filter_real_dropped, filter_real_drop_rate (empirical FPR on real samples),
        filter_synth_caught, filter_synth_missed, filter_tpr (caught / synthetic; NaN without
        synthetic samples), filter_marked_caught, filter_marked_n, real_fraction_before; then
        those of ``columns(t)``.
        """
        flagged = self.flag(t, pool.x).to(pool.origin.device).bool()
        if flagged.shape != (len(pool),):
            raise LoopError(f"the filter returned {tuple(flagged.shape)} flags for {len(pool)} samples",
                            "the flag callable must return one bool per sample")
        real = pool.origin == 0
        synthetic = ~real
        n_real, n_synth = int(real.sum()), int(synthetic.sum())
        real_dropped = int((flagged & real).sum())
        caught = int((flagged & synthetic).sum())
        stats = {
            "filter_n_in": len(pool),
            "filter_real_dropped": real_dropped,
            "filter_real_drop_rate": real_dropped / n_real if n_real else math.nan,
            "filter_synth_caught": caught,
            "filter_synth_missed": n_synth - caught,
            "filter_tpr": caught / n_synth if n_synth else math.nan,
            "filter_marked_n": int(pool.marked.sum()),
            "filter_marked_caught": int((flagged & pool.marked).sum()),
            "real_fraction_before": n_real / len(pool) if len(pool) else math.nan,
        }
        if self.columns is not None:
            stats.update(self.columns(t))
        kept = pool.subset(~flagged)
        if len(kept) < self.min_pool:
            raise LoopError(
                f"generation {t}: the filter flagged {int(flagged.sum())} of {len(pool)} pool samples "
                f"({real_dropped} real, {caught} synthetic), leaving {len(kept)}: too few to fit a "
                f"model (filter.min_pool={self.min_pool})",
                "a fully synthetic loop has nothing left once its synthetic samples are caught: use "
                "loop=synthetic_augmentation or loop=fresh_data with the filter, or filter=none")
        return kept, stats
