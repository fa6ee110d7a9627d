"""The generative loop engine: one generation after another, each trained from scratch.

One generation t (DESIGN.md):
    pool_t  = family.compose(t, real, history)     real and synthetic, with provenance
    pool_t  = filter(t, pool_t)                     optional: drop what the detector flags
    model_t = new model, fit(pool_t.x, labels)      trained from scratch
    S_t     = model_t.sample(n_s, bias=λ)           conditional models: uniformly drawn labels
    D_t     = model_t.sample(filter.draw.n)         only for a filter that asks (HeldOutDraw), t < T
    row_t   = pool composition + filter and fit stats + evaluators(S_t)   (S_t unmarked; an
                                                    evaluator may also take S_t's labels)
    S_t'    = watermark(t, S_t)                     optional: what enters later pools is marked
                                                    (text: drawn again from model_t with the
                                                    watermark in the sampler, S_t's stream)
    sample_hooks(t, S_t)                            e.g. the sample grid, before the checkpoint
    history.append(S_t'); checkpoint g<t> (with D_t) atomically; hooks(t, S_t, rows)

The engine knows nothing of data files, configs or run directories: it gets real data as tensors
and callables, and writes only to its :class:`~loops.checkpoint.Checkpoints`.

Under ``torchrun`` (:mod:`madcore.dist`) every rank runs the same loop: the random streams
derive from (seed, generation, purpose), so all ranks compose the same pools and draw the same
S_t; a distributed-aware model (the DDPM) splits its training and sampling across ranks, any other
model simply runs identically on every rank. Only rank 0 writes checkpoints, and no rank starts a
generation before every rank has read the finished ones (resume).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import torch

from madcore import dist
from madcore.columns import Column
from madcore.faults import kill_point
from loops.checkpoint import Checkpoints
from loops.errors import LoopError, check_bias
from loops.families import LoopFamily
from loops.models.base import FIT_PREFIX, GenerativeModel, ProgressFn
from loops.pool import Pool
from madcore.rng import generator
from loops.stages import FilterStage, SamplingWatermarkStage, WatermarkStage

Row = dict[str, Any]
#: ``evaluator(t, samples, model) -> dict`` adds metric columns to generation t's row. An
#: evaluator that names a ``labels`` parameter is also given S_t's class labels (int64 (n,), drawn
#: for a conditional model; None for an unconditional one) as ``labels=`` (:func:`takes_labels`).
Evaluator = Callable[[int, torch.Tensor, GenerativeModel], dict[str, Any]]
#: ``hook(t, samples, rows)`` runs after generation t is checkpointed; ``rows`` holds the rows of
#: generations 1..t (sample grids, results.csv). Hooks run on every rank: writers check
#: ``madcore.dist.is_main()``.
Hook = Callable[[int, torch.Tensor, list[Row]], None]
#: ``sample_hook(t, samples)`` runs once S_t is drawn and evaluated, before generation t's
#: checkpoint is written, so whatever it writes exists for every checkpointed generation (a process
#: killed between it and the checkpoint recomputes generation t and rewrites it identically).
SampleHook = Callable[[int, torch.Tensor], None]

#: the columns the engine itself writes first in every row (then the pool's composition, the
#: filter stage's, the model's ``fit_`` statistics, the evaluators' and the watermark stage's)
COLUMNS = (
    Column("generation", "generation t of the loop; generation 1 trains on real data only",
           "index (1-based)", "the loop"),
    Column("family", "loop family: fully_synthetic, synthetic_augmentation or fresh_data", "text",
           "the run's config (loop.family)"),
    Column("history", "which earlier synthetic samples the pool keeps: replace (S_{t-1} only) or "
           "accumulate (S_1..S_{t-1})", "text", "the run's config (loop.history)"),
    Column("bias", "sampling bias λ of S_t (1 = unbiased)", "λ in (0, 1]",
           "the run's config (loop.bias)"),
)


def takes_labels(evaluate: Evaluator) -> bool:
    """Whether ``evaluate`` names a ``labels`` parameter (it is then called with ``labels=``)."""
    try:
        return "labels" in inspect.signature(evaluate).parameters
    except (TypeError, ValueError):         # a builtin or C callable without a signature
        return False


class RealSource(Protocol):
    """What the engine needs of a data source (see ``madmark.data.base.DataSource``).

    A source may also have ``draw_real_labeled(n, generator) -> (x, labels or None)``; the engine
    then keeps the class labels of real samples (conditional models train on them)."""

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor: ...


@dataclass
class LoopSettings:
    """Sizes and bias of a loop.

    Attributes:
        generations: number of generations T ≥ 1.
        n_real: real samples per pool (generation 1, the fixed set, or each fresh draw).
        n_synthetic: samples drawn from each generation's model (n_s).
        bias: sampling bias λ ∈ (0, 1], 1 = unbiased.
        seed: run seed; every random stream derives from it and the generation.
    """

    generations: int
    n_real: int
    n_synthetic: int
    bias: float = 1.0
    seed: int = 0

    def validate(self, family: LoopFamily) -> None:
        check_bias(self.bias)
        if self.generations < 1:
            raise LoopError(f"loop.generations={self.generations} must be at least 1",
                            "set loop.generations to 1 or more")
        if self.n_real < 2:
            raise LoopError(f"loop.n_real={self.n_real} leaves too few real samples to fit a model",
                            "set loop.n_real to 2 or more")
        if self.n_synthetic < 0:
            raise LoopError(f"loop.n_synthetic={self.n_synthetic} is negative",
                            "set loop.n_synthetic to a positive count")
        needs_synthetic = self.generations > 1 and not family.needs_fresh_real
        if self.n_synthetic == 0 and needs_synthetic:
            raise LoopError(f"loop.n_synthetic=0 but the {family.family} loop trains on synthetic "
                            "samples from generation 2 on",
                            "set loop.n_synthetic to a positive count (or use loop=fresh_data)")


@dataclass
class LoopEngine:
    """Runs (or resumes) a self-consuming loop.

    Args:
        source: gives real samples; its ``draw_real(n, generator)`` supplies the fixed real set
            (generation 0 stream) and each fresh draw (generation t stream).
        make_model: builds a new, untrained model (called once per generation).
        family: the loop family and history mode.
        settings: sizes, bias and seed.
        checkpoints: where finished generations are stored (by rank 0 only); existing ones are
            resumed from.
        device: where pools, models and samples live.
        evaluators: add metric columns to each row, computed on the unmarked samples S_t.
        hooks: run after each generation is checkpointed.
        sample_hooks: run with each generation's unmarked samples S_t before its checkpoint.
        progress: ``progress(t) -> ProgressFn`` builds a fit progress callback for generation t.
        watermark: optional stage marking the pooled part of S_t before it enters later pools
            (a :class:`~loops.stages.SamplingWatermarkStage` draws it again, marked, from model_t).
        filter: optional stage dropping flagged pool samples before each fit.
    """

    source: RealSource
    make_model: Callable[[], GenerativeModel]
    family: LoopFamily
    settings: LoopSettings
    checkpoints: Checkpoints
    device: torch.device = torch.device("cpu")
    evaluators: list[Evaluator] = field(default_factory=list)
    hooks: list[Hook] = field(default_factory=list)
    sample_hooks: list[SampleHook] = field(default_factory=list)
    progress: Optional[Callable[[int], Optional[ProgressFn]]] = None
    watermark: Optional[WatermarkStage | SamplingWatermarkStage] = None
    filter: Optional[FilterStage] = None

    def __post_init__(self):
        self.settings.validate(self.family)
        self._fixed_real: Optional[Pool] = None

    # -- real data ---------------------------------------------------------------------------
    def _draw_real(self, t: int) -> Pool:
        g = generator(self.settings.seed, t, "real")
        draw = getattr(self.source, "draw_real_labeled", None)
        if draw is None:
            x, labels = self.source.draw_real(self.settings.n_real, g), None
        else:
            x, labels = draw(self.settings.n_real, g)
        return Pool.real(x.to(self.device), None if labels is None else labels.to(self.device))

    def fixed_real(self) -> Pool:
        """The real set of generation 1 (and of every generation of synthetic augmentation)."""
        if self._fixed_real is None:
            self._fixed_real = self._draw_real(0)
        return self._fixed_real

    # -- the loop ----------------------------------------------------------------------------
    def resume_state(self) -> tuple[list[Pool], list[Row]]:
        """Synthetic history and rows of the generations already finished on disk."""
        history, rows = [], []
        for t in self.checkpoints.finished():
            record = self.checkpoints.load(t, map_location=self.device)
            synthetic = Pool(record["samples"], record["origin"], record["marked"],
                             record.get("label"))
            history.append(synthetic.subset(self._pooled(len(synthetic))))
            rows.append(record["row"])
            draw = self.filter.draw if self.filter is not None else None
            if draw is not None and "filter_train" in record:
                draw.receive(t, record["filter_train"])
        return history, rows

    def run(self) -> list[Row]:
        """Run generations after the last finished one; returns the rows of all generations."""
        history, rows = self.resume_state()
        dist.barrier()      # every rank has read the finished generations before rank 0 adds one
        for t in range(len(rows) + 1, self.settings.generations + 1):
            samples, produced, row = self.generation(t, history)
            history.append(produced.subset(self._pooled(len(produced))))
            rows.append(row)
            for hook in self.hooks:
                hook(t, samples, rows)
        return rows

    def _pooled(self, n: int) -> torch.Tensor:
        """Mask of the samples of S_t that enter later pools: the first n_synthetic (all of them,
        unless n_synthetic = 0 in a fresh-data loop, where S_t is drawn only to be evaluated)."""
        keep = torch.zeros(n, dtype=torch.bool, device=self.device)
        keep[:self.settings.n_synthetic] = True
        return keep

    def generation(self, t: int, history: list[Pool]) -> tuple[torch.Tensor, Pool, Row]:
        """Compose, filter, fit, sample, evaluate, mark and checkpoint generation ``t``.

        Returns the unmarked samples S_t (n, ...), S_t as it enters later pools (marked where the
        watermark stage ran, with provenance and labels), and the generation's row.
        """
        s = self.settings
        pool = self.family.compose(t, self.fixed_real(), self._draw_real, history)
        row: Row = {"generation": t, "family": self.family.family, "history": self.family.history,
                    "bias": s.bias}
        filter_stats = {}
        if self.filter is not None:
            pool, filter_stats = self.filter(t, pool)
        row.update(pool.composition())
        row.update(filter_stats)
        model = self.make_model()
        progress = self.progress(t) if self.progress else None
        fit_stats = model.fit(pool.x, generator(s.seed, t, "fit", self.device), progress,
                              labels=pool.labels())
        row.update({f"{FIT_PREFIX}{k}": v for k, v in fit_stats.items()})
        n_sample = s.n_synthetic if s.n_synthetic > 0 else s.n_real
        samples, labels = self._sample(model, t, n_sample, "sample", "labels", "samples")
        held_out = self._held_out_draw(t, model)
        for evaluate in self.evaluators:
            extra = {"labels": labels} if takes_labels(evaluate) else {}
            row.update(evaluate(t, samples, model, **extra))
        produced = Pool.synthetic(samples, t, label=labels)
        if self.watermark is not None:
            pooled = self._pooled(len(samples))
            if isinstance(self.watermark, SamplingWatermarkStage):   # text: marks while sampling
                marked_x, wm_stats = self.watermark(
                    t, samples[pooled], model, s.bias,
                    generator(s.seed, t, "sample", self.device))
            else:
                marked_x, wm_stats = self.watermark(t, samples[pooled])
            x = samples.clone()
            x[pooled] = marked_x.to(x.dtype)
            produced = Pool(x, produced.origin, pooled.clone(), produced.label)
            row.update(wm_stats)
        for hook in self.sample_hooks:
            hook(t, samples)
        if dist.is_main():                          # the other ranks hold the same state
            self.checkpoints.save(t, {"generation": t, "samples": produced.x.cpu(),
                                      "origin": produced.origin.cpu(),
                                      "marked": produced.marked.cpu(),
                                      "label": produced.label.cpu(),
                                      "model": {k: v.cpu() for k, v in model.state_dict().items()},
                                      "row": row, **_held_out_record(held_out)})
            kill_point("after-checkpoint")          # tests only (madcore.faults)
        if held_out is not None:
            self.filter.draw.receive(t, held_out)
        return samples, produced, row

    def _held_out_draw(self, t: int, model: GenerativeModel) -> Optional[torch.Tensor]:
        """D_t: the filter's :class:`~loops.stages.HeldOutDraw` of generation t, ``n`` samples of
        model_t at S_t's bias with their own streams (seed, t, "filter-train" and, for
        conditional models, "filter-train-labels"), drawn after S_t so S_t is the same with or
        without it; None when the filter asks for none, and at the last generation (no later
        generation trains on it)."""
        draw = self.filter.draw if self.filter is not None else None
        if draw is None or draw.n < 1 or t >= self.settings.generations:
            return None
        return self._sample(model, t, draw.n, "filter-train", "filter-train-labels",
                            "samples for the filter's held-out draw")[0]

    def _sample(self, model: GenerativeModel, t: int, n: int, purpose: str,
                labels_purpose: str, what: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """n samples of model_t at the loop's bias from the stream (seed, t, purpose), and for a
        conditional model the uniformly drawn labels it samples for, from (seed, t,
        labels_purpose), drawn first (None otherwise). Non-finite samples (a diverged fit) are a
        LoopError naming ``what`` was drawn."""
        s = self.settings
        labels, conditioning = None, {}
        if model.conditional:
            labels = torch.randint(model.num_classes, (n,), device=self.device,
                                   generator=generator(s.seed, t, labels_purpose, self.device))
            conditioning = {"labels": labels}
        x = model.sample(n, bias=s.bias, **conditioning,
                         generator=generator(s.seed, t, purpose, self.device))
        if not torch.isfinite(x).all():
            raise LoopError(f"generation {t}: the {type(model).__name__} produced non-finite "
                            f"{what} (the fit diverged)",
                            "use a simpler model or more samples per generation (loop.n_real, "
                            "loop.n_synthetic)")
        return x, labels


def _held_out_record(held_out: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint entry of a held-out draw D_t (``filter_train``); none without one."""
    return {} if held_out is None else {"filter_train": held_out.cpu()}
