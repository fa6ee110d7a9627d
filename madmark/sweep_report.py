"""The report of a Hydra multirun sweep: every run's results.csv side by side.

    madmark run -m loop.bias=1.0,0.8 seed=0,1     # writes <sweep_dir>/0/, 1/, ... (one run each)
    madmark report <sweep_dir>                     # writes the three files below in <sweep_dir>

    summary.csv        one row per run × generation: job, label, overrides, then results.csv
    summary.md         per key metric a table run × generation (the "method × generation" table
                       of a robustness benchmark), then the final generation of every run
    plots/summary.png  one panel per key metric against generation, one line per run

A run is labelled by its Hydra overrides (``<job>/.hydra/overrides.yaml``) that differ between
the runs of the sweep, e.g. ``loop.bias=0.8 seed=1``; the full list is in summary.csv.

When the sweep crosses ``arm=control`` with other arms, summary.md also gives, per generation,
each run's value minus its control run's (same overrides but ``arm``): the artifact energy and
inheritance the marks add, and what marking or filtering costs in precision, recall and FID.
An unmarked loop does not read 0 layers (a model's own mean shift projects on the mark's pattern),
so the difference is the number to read.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from madcore.figures import new_figure, save_png
from madcore.files import atomic_write_text
from madcore.errors import MadmarkError
from madmark.columns import declared
from madmark.report import _cell, _number
from madmark.rundir import read_csv, rows_to_csv
from madmark.scorecard import CSV_COLUMNS as SCORECARD_CSV, scorecard_rows, scorecard_table

#: metrics with a run × generation table and a panel (in order; absent ones are skipped)
SWEEP_METRICS = declared(("precision", "recall", "density", "coverage", "fid",
                          "inherit_detect_rate", "inherit_bit_acc", "artifact_energy",
                          "artifact_energy_growth", "filter_tpr", "filter_real_drop_rate",
                          "real_fraction", "cas", "cas_augmented", "ppl_real", "ppl_ref",
                          "distinct_2", "tail_mass", "inherit_z_median", "radio_log10p",
                          "spread_ratio", "w2_to_true"))


#: metrics compared with the control arm (``arm=control``), when the sweep has one
CONTROL_DELTAS = declared(("artifact_energy", "inherit_detect_rate", "precision", "recall",
                           "fid"))
declared(("generation",))                                       # named in the code below

#: the per-model table of a sweep that crosses ``model=`` (the robustness-to-autophagy benchmark)
MODEL_TABLE_METRICS = declared(("inherit_bit_acc", "inherit_detect_rate", "artifact_energy",
                                "radio_log10p", "precision", "recall", "fid"))


@dataclass
class SweepRun:
    job: str                        # the job's folder name (Hydra's job number)
    path: Path
    overrides: list[str]
    rows: list[dict[str, str]]
    status: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def settings(self) -> dict[str, str]:
        """The overrides as {key: value} (``arm=control`` -> {"arm": "control"})."""
        return dict(o.partition("=")[::2] for o in self.overrides)


def run_folders(sweep_dir: Path) -> list[Path]:
    """Direct subfolders holding a results.csv, in job order (numeric names numerically)."""
    found = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / "results.csv").is_file()]
    return sorted(found, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit()
                                        else 0, p.name))


def is_sweep(folder: Path) -> bool:
    return folder.is_dir() and not (folder / "results.csv").is_file() and bool(run_folders(folder))


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf
    return [str(o) for o in OmegaConf.load(path)]


def label_runs(runs: list[SweepRun]) -> None:
    """Label each run by the overrides whose value differs between runs (first-seen order);
    a run with none, or a label shared with another run, gets its job name too."""
    values = [run.settings for run in runs]
    keys: list[str] = []
    for v in values:
        keys.extend(k for k in v if k not in keys)
    varying = [k for k in keys if len({v.get(k) for v in values}) > 1]
    for run, v in zip(runs, values):
        run.label = " ".join(f"{k}={v[k]}" for k in varying if k in v)
    labels = [run.label for run in runs]
    for run in runs:
        if not run.label or labels.count(run.label) > 1:
            run.label = f"{run.label} (job {run.job})" if run.label else f"job {run.job}"


def load_sweep(sweep_dir: Path) -> list[SweepRun]:
    runs = []
    for path in run_folders(sweep_dir):
        status = path / "status.json"
        runs.append(SweepRun(job=path.name, path=path, overrides=_overrides(path),
                             rows=read_csv(path / "results.csv"),
                             status=json.loads(status.read_text()) if status.is_file() else {}))
    label_runs(runs)
    return runs


def _generation(row: dict[str, Any]) -> int | None:
    g = _number(row.get("generation"))
    return None if g is None else int(g)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def metric_table(runs: list[SweepRun], metric: str) -> str:
    """Markdown: one row per run (its label), one column per generation, cells = ``metric``."""
    gens = sorted({g for run in runs for r in run.rows if (g := _generation(r)) is not None})
    lines = ["| run | " + " | ".join(f"g{g}" for g in gens) + " |", "|" + "---|" * (len(gens) + 1)]
    for run in runs:
        by_gen = {_generation(r): r.get(metric, "") for r in run.rows}
        lines.append(f"| {_escape(run.label)} | "
                     + " | ".join(_cell(by_gen.get(g, "")) for g in gens) + " |")
    return "\n".join(lines)


def control_pairs(runs: list[SweepRun]) -> list[tuple[SweepRun, SweepRun]]:
    """(run, its control run) for every run whose overrides equal a ``arm=control`` run's except
    for ``arm``, in run order."""
    def arm_and_rest(run: SweepRun) -> tuple[str | None, tuple]:
        settings = run.settings
        return settings.pop("arm", None), tuple(sorted(settings.items()))

    split = [(run, *arm_and_rest(run)) for run in runs]
    controls = {rest: run for run, arm, rest in split if arm == "control"}
    return [(run, controls[rest]) for run, arm, rest in split
            if arm not in (None, "control") and rest in controls]


def delta_table(pairs: list[tuple[SweepRun, SweepRun]], metric: str) -> str:
    """Markdown: one row per (run, control) pair, one column per generation, cells = the run's
    ``metric`` minus its control's (empty where either is missing)."""
    gens = sorted({g for run, _ in pairs for r in run.rows if (g := _generation(r)) is not None})
    lines = ["| run − its control | " + " | ".join(f"g{g}" for g in gens) + " |",
             "|" + "---|" * (len(gens) + 1)]
    for run, control in pairs:
        a = {_generation(r): _number(r.get(metric)) for r in run.rows}
        b = {_generation(r): _number(r.get(metric)) for r in control.rows}
        cells = [_cell(a[g] - b[g]) if a.get(g) is not None and b.get(g) is not None else ""
                 for g in gens]
        lines.append(f"| {_escape(run.label)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_tables(runs: list[SweepRun]) -> list[tuple[str, str]]:
    """(model, Markdown table) per value of a ``model=`` override that differs between runs:
    one row per run of that model × generation, with :data:`MODEL_TABLE_METRICS` and, where the
    run has an ``arm=control`` twin, its artifact energy minus the control's. [] when the sweep
    does not cross models."""
    models = list(dict.fromkeys(run.settings.get("model") for run in runs))
    if len(models) < 2 or None in models:
        return []
    control = {id(run): twin for run, twin in control_pairs(runs)}
    head = ["run", "g", "inherit_bit_acc", "inherit_detect_rate", "artifact_energy − control",
            "radio_log10p", "precision", "recall", "fid"]
    out = []
    for model in models:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for run in (r for r in runs if r.settings.get("model") == model):
            label = " ".join(p for p in run.label.split() if not p.startswith("model="))
            twin = {_generation(r): _number(r.get("artifact_energy"))
                    for r in control[id(run)].rows} if id(run) in control else {}
            for row in run.rows:
                g = _generation(row)
                e, e0 = _number(row.get("artifact_energy")), twin.get(g)
                delta = _cell(e - e0) if e is not None and e0 is not None else ""
                cells = [_escape(label or run.label), _cell(row.get("generation", "")),
                         *(_cell(row.get(m, "")) for m in MODEL_TABLE_METRICS[:2]), delta,
                         *(_cell(row.get(m, "")) for m in MODEL_TABLE_METRICS[3:])]
                lines.append("| " + " | ".join(cells) + " |")
        out.append((model, "\n".join(lines)))
    return out


def final_table(runs: list[SweepRun], metrics: list[str]) -> str:
    """Markdown: one row per run, its last finished generation and the ``metrics`` there."""
    lines = ["| run | generation | " + " | ".join(metrics) + " |",
             "|" + "---|" * (len(metrics) + 2)]
    for run in runs:
        last = run.rows[-1] if run.rows else {}
        lines.append(f"| {_escape(run.label)} | {_cell(last.get('generation', ''))} | "
                     + " | ".join(_cell(last.get(m, "")) for m in metrics) + " |")
    return "\n".join(lines)


def present_metrics(runs: list[SweepRun]) -> list[str]:
    return [m for m in SWEEP_METRICS
            if any(_number(r.get(m)) is not None for run in runs for r in run.rows)]


def plot_sweep(runs: list[SweepRun], metrics: list[str], path: Path, title: str = "") -> bool:
    """One panel per metric against generation, one line per run; False if nothing to plot."""
    from matplotlib.ticker import MaxNLocator

    if not metrics:
        return False
    cols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    legend_h = 0.3 * math.ceil(len(runs) / 2) + 0.2                 # inches below the panels
    height = 3 * nrows + legend_h
    fig, axes = new_figure(nrows, cols, figsize=(4 * cols, height), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, metric in zip(axes.flat, metrics):
        for i, run in enumerate(runs):
            points = [(_generation(r), _number(r.get(metric))) for r in run.rows]
            points = [(g, v) for g, v in points if g is not None and v is not None]
            if points:
                (line,) = ax.plot([g for g, _ in points], [v for _, v in points], marker="o",
                                  color=f"C{i % 10}")
                handles.setdefault(run.label, line)
        ax.set_title(metric)
        ax.set_xlabel("generation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=2,
               fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    save_png(fig, path, dpi=100)
    return True


def write_sweep_report(sweep_dir: str | Path) -> Path:
    """Write ``summary.csv``, ``summary.md`` and ``plots/summary.png`` in a multirun folder whose
    job subfolders hold results.csv; returns summary.md."""
    sweep_dir = Path(sweep_dir)
    name = sweep_dir.resolve().name
    runs = load_sweep(sweep_dir)
    if not runs:
        raise MadmarkError(f"{sweep_dir} has no run subfolders with a results.csv",
                           "pass a multirun folder written by madmark run -m")
    atomic_write_text(sweep_dir / "summary.csv", rows_to_csv(
        {"job": run.job, "label": run.label, "overrides": " ".join(run.overrides), **row}
        for run in runs for row in run.rows))
    metrics = present_metrics(runs)
    lines = [f"# madmark sweep report: {name}", "",
             f"{len(runs)} runs; each is labelled by the overrides that differ between runs "
             "(all overrides: summary.csv).", "",
             "| job | run | generations finished | status |", "|---|---|---|---|"]
    for run in runs:
        total = run.status.get("generations")
        lines.append(f"| {run.job} | {_escape(run.label)} | {len(run.rows)}"
                     + (f" of {total}" if total else "")
                     + f" | {run.status.get('state', 'unknown')} |")
    skipped = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()
                     and (p / ".hydra").is_dir() and not (p / "results.csv").is_file())
    if skipped:
        lines += ["", f"Jobs without results.csv (failed before a generation finished): "
                      f"{', '.join(skipped)}"]
    lines.append("")
    for metric in metrics:
        lines += [f"## {metric}", "", metric_table(runs, metric), ""]
    if metrics:
        lines += ["## Final generation", "", final_table(runs, metrics), ""]
    pairs = control_pairs(runs)
    deltas = [m for m in CONTROL_DELTAS if m in metrics]
    if pairs and deltas:
        lines += ["## Against the control arm", "",
                  "Each run minus its `arm=control` run (same overrides otherwise), per generation: "
                  "what the marks add (artifact energy in watermark layers, detection rate) and "
                  "what marking or filtering costs (precision, recall, FID).", ""]
        for metric in deltas:
            lines += [f"## {metric} − control", "", delta_table(pairs, metric), ""]
    tables = model_tables(runs)
    if tables:
        lines += ["## By model", "",
                  "One table per generative model of the sweep: inheritance (bit accuracy and "
                  "detection rate of the mark in the model's own unmarked samples), artifact "
                  "energy above the control arm (watermark layers), radioactivity of each "
                  "generation's model (log10 p of the sign-flip test on all its samples, "
                  "`radio_m` of them), and quality (precision, recall, FID).", ""]
        for model, table in tables:
            lines += [f"### model={model}", "", table, ""]
    scorecard = scorecard_rows(pairs)
    if scorecard:
        atomic_write_text(sweep_dir / "scorecard.csv", rows_to_csv(
            {k: row.get(k) for k in SCORECARD_CSV} for row in scorecard))
        lines += ["## Autophagy-aware scorecard", "",
                  "One row per watermark × model × loop (marked run and its control; seeds "
                  "averaged, ± their spread), generation 2 on being the generations trained on "
                  "marked data (madmark/scorecard.py). 1 idempotence: `idem_layers` (a second "
                  "marking, in watermark layers; pass |·| ≤ 0.05) and `idem_psnr_db` (≥ 50). "
                  "2 no accumulation: `energy_g2` = artifact energy above control at g2, `drift` = "
                  "max over t ≥ 2 of its change since g2 (pass ≤ 0.2 layer). 3a `detect_min`: "
                  "lowest detection rate of the model's own samples, t ≥ 2 (≥ 0.99, judged in fully "
                  "synthetic loops); 3b "
                  "`radio_log10p_max`: weakest radioactivity, t ≥ 2 (≤ −6). 4 per-generation "
                  "keys (key_mode generation or message): `marked_detect_min`, the lowest share "
                  "of each generation's marked samples found by its own key (≥ 0.99), and "
                  "`drift_all_keys`, the drift of the layers of all keys together (≤ 0.2). "
                  "5 `wm_psnr` of generation 1's marking (≥ 34 dB grey, ≥ 38 dB RGB); `d_*`: "
                  "precision, recall, FID minus control at the last generation.", "",
                  scorecard_table(scorecard), ""]
    if plot_sweep(runs, metrics, sweep_dir / "plots" / "summary.png", title=name):
        lines += ["![key metrics against generation, one line per run](plots/summary.png)", ""]
    path = sweep_dir / "summary.md"
    atomic_write_text(path, "\n".join(lines))
    return path
