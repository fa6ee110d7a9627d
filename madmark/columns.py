"""Every results.csv column, gathered from the declarations next to the code that writes it.

    python -m madmark.columns > docs/columns.md     # the reference of every column

:data:`PRODUCERS` lists, in the order a row is built, each piece of code that writes columns and
in which runs it runs; each producer declares its own columns (:class:`madcore.columns.Column`,
module-level ``COLUMNS`` tuples and the models' ``fit_columns``). Consumers (report.md, the sweep
report, the console table) name their columns through :func:`declared`, so a typo or a rename not
followed raises :class:`~madcore.columns.UndeclaredColumn` when the consumer is imported.

Model fit statistics are declared per model class (``GenerativeModel.fit_columns``, column
``fit_<key>``); a model from outside ``loops.models`` declares its own but is not listed here, so
its ``fit_`` columns show as undeclared in report.md's Columns section.
"""
from __future__ import annotations

from typing import Iterable

import eval.artifacts
import eval.cas
import eval.growth
import eval.idempotence
import loops.engine
import loops.pool
import loops.stages
import madmark.classifier_filter
import madmark.evaluation
import madmark.metrics
import madmark.text_evaluation
import madmark.text_run
import madmark.watermarking
from loops.models import (DDPMModel, FlowModel, GaussianModel, GMMModel, GPTModel,
                          LatentDiffusionModel, NGramModel, PCAGMMModel, VAEModel, WGANGPModel)
from madcore.columns import Column, ColumnRegistry, Producer

_EVERY = "every run"
_WATERMARK = "runs with a watermark (`watermark=<method>`)"
_MODELS = (GaussianModel, GMMModel, PCAGMMModel, FlowModel, DDPMModel, WGANGPModel, VAEModel,
           LatentDiffusionModel, NGramModel, GPTModel)
_TEXT_WATERMARK = "text runs with a text watermark (`watermark=kgw` or `watermark=exp`)"

#: every producer of results.csv columns, in the order a row is built
PRODUCERS: tuple[Producer, ...] = (
    Producer("loops.engine.LoopEngine", _EVERY, loops.engine.COLUMNS),
    Producer("loops.pool.Pool.composition", _EVERY, loops.pool.COLUMNS),
    Producer("loops.stages.FilterStage", "runs with a filter: `filter=detector` (which needs a "
             "watermark) or `filter=classifier`", loops.stages.FILTER_COLUMNS),
    Producer("madmark.classifier_filter.ClassifierFilter",
             "runs with `filter=classifier` (a learned real-vs-synthetic detector)",
             madmark.classifier_filter.COLUMNS),
    *(Producer(f"loops.models.{m.__name__}.fit", f"runs whose model is {m.__name__}",
               m.fit_columns) for m in _MODELS),
    Producer("madmark.evaluation.spread_evaluator", _EVERY,
             madmark.evaluation.SPREAD_COLUMNS),
    Producer("madmark.metrics.GenerationMetrics", "runs with `eval.enabled=true` (the default)",
             madmark.metrics.COLUMNS),
    Producer("eval.cas.ClassificationAccuracyScore",
             "runs with `eval.cas=true` (labelled image data; built by madmark.cas.build_cas)",
             eval.cas.COLUMNS),
    Producer("madmark.text_evaluation.TextMetrics",
             "text runs (`data=shakespeare`, `data=textfile`) with `eval.enabled=true`",
             madmark.text_evaluation.COLUMNS),
    Producer("madmark.evaluation.vector_truth_evaluator",
             "runs on vector data with known true moments (`data=gaussian`, `data=gmm2d`)",
             madmark.evaluation.TRUTH_COLUMNS),
    Producer("madmark.watermarking.RunWatermark.settings", _WATERMARK,
             madmark.watermarking.SETTINGS_COLUMNS),
    Producer("eval.artifacts.ArtifactMeter", _WATERMARK, eval.artifacts.COLUMNS),
    Producer("eval.idempotence.idempotence", _WATERMARK, eval.idempotence.COLUMNS),
    Producer("madmark.watermarking.RunWatermark.artifact_evaluator",
             "runs with a watermark and a key per generation (`watermark.key_mode=generation` or `message`)",
             madmark.watermarking.KEYS_COLUMNS),
    Producer("loops.stages.WatermarkStage",
             "runs with a watermark that marks (`watermark=<method>`, but not `arm=control`)",
             loops.stages.WATERMARK_COLUMNS),
    Producer("eval.growth.add_growth", _WATERMARK, eval.growth.COLUMNS),
    Producer("madmark.text_run.TextRunWatermark.settings", _TEXT_WATERMARK,
             madmark.text_run.SETTINGS_COLUMNS),
    Producer("madmark.text_run.TextRunWatermark.inheritance", _TEXT_WATERMARK,
             madmark.text_run.INHERITANCE_COLUMNS),
    Producer("loops.stages.SamplingWatermarkStage",
             "text runs with a text watermark that marks (not `arm=control`)",
             loops.stages.SAMPLING_WATERMARK_COLUMNS),
)
REGISTRY = ColumnRegistry(PRODUCERS)


def declared(columns: Iterable[str]) -> tuple[str, ...]:
    """``columns`` as a tuple; raises UndeclaredColumn naming any no producer declares."""
    return REGISTRY.require(columns)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _meaning(column: Column) -> str:
    return column.meaning + (f" (only with {column.when})" if column.when else "")


def column_table(columns: Iterable[str | Column]) -> list[str]:
    """Markdown lines: one row per column, name | meaning | unit | computed on; a name no producer
    declares (an old run, a model from outside loops.models) reads ``(not declared)``."""
    lines = ["| column | meaning | unit | computed on |", "|---|---|---|---|"]
    for c in columns:
        found = c if isinstance(c, Column) else REGISTRY.get(c)
        cells = ([f"`{found.name}`", _meaning(found), found.unit, found.computed_on] if found
                 else [f"`{c}`", "(not declared)", "", ""])
        lines.append("| " + " | ".join(_escape(x) for x in cells) + " |")
    return lines


def report_section(columns: Iterable[str]) -> list[str]:
    """report.md's "Columns" section for the columns of a results.csv, in its order."""
    return ["## Columns", "", "What each column of results.csv is (docs/columns.md lists every "
            "declared column):", "", *column_table(columns), ""]


def docs_text() -> str:
    """docs/columns.md: every declared column, grouped by producer."""
    lines = ["# results.csv columns", "",
             "Generated by `python -m madmark.columns > docs/columns.md` from the declarations "
             "next to the code that writes each column (`madcore.columns.Column`); do not edit by "
             "hand. Producers are listed in the order a row is built, which is the order of "
             "results.csv's columns; each says in which runs it writes its columns.", ""]
    for p in PRODUCERS:
        lines += [f"## `{p.name}`", "", f"Written in {p.when}.", "", *column_table(p.columns), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(docs_text(), end="")
