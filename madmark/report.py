"""report.md and plots/*.png of a run, regenerated from results.csv alone.

    madmark report <run_dir>

report.md: the loop and fidelity table (:data:`TABLE`). When the run has a watermark or filter
stage, the key table comes first (:data:`KEY_TABLE`: fidelity, inheritance, artifact energy and
growth, filter TPR/FPR, real fraction), then the loop and fidelity, watermark
(:data:`WATERMARK_TABLE`) and filter (:data:`FILTER_TABLE`) tables. Plots: ``plots/metrics.png``
(:data:`PLOTTED`, and :data:`CAS_PANEL` with ``eval.cas=true``) and, with watermark columns,
``plots/artifacts.png`` (:data:`ARTIFACT_PANELS`).
Last, a "Columns" section says what each column of results.csv is (:mod:`madmark.columns`).
Absent columns are skipped everywhere, but every column named here must be declared
(:func:`madmark.columns.declared`): a misspelt or renamed one raises UndeclaredColumn on import.
Sweeps of runs: :mod:`madmark.sweep_report`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Union

from madcore.figures import new_figure, save_png
from madcore.files import atomic_write_text
from madmark.columns import declared, report_section

#: metrics plotted against generation, one panel each, in panel order (absent columns are
#: skipped); the CAS panel (:data:`CAS_PANEL`) follows kid
PLOTTED = declared(("precision", "recall", "density", "coverage", "fid", "kid", "spread_ratio",
                    "w2_to_true", "logdet_cov", "ppl_real", "ppl_ref", "distinct_2", "distinct_4",
                    "tail_mass", "tail_unseen"))
#: the classification accuracy score's panel of plots/metrics.png: CAS on S_t, the naive
#: augmentation score and the real-data ceiling (a panel as in :data:`ARTIFACT_PANELS`)
CAS_PANEL = ("classification accuracy score", (("cas", "trained on S_t"),
                                               ("cas_augmented", "real + S_t"),
                                               ("cas_real", "real (ceiling)")), None)
#: columns of the loop and fidelity table (absent ones are skipped)
TABLE = declared(("generation", "n_pool", "real_fraction", "origin_counts", "precision", "recall",
                  "density", "coverage", "fid", "kid", "cas", "cas_augmented", "cas_real",
                  "spread_ratio", "w2_to_true", "logdet_cov", "trace_cov", "ppl_real", "ppl_ref",
                  "distinct_1", "distinct_2", "distinct_3", "distinct_4", "tail_mass",
                  "tail_unseen"))
#: columns naming what the metrics were computed on (constant over a run)
SETTINGS = declared(("features", "n_real_eval", "n_fake_eval", "k", "kid_subsets",
                     "kid_subset_size", "spread_n_reference", "moments_from", "cas_labels",
                     "cas_n_train", "cas_n_test", "cas_epochs", "text_reference_lm",
                     "text_tail_share", "n_text_eval"))
#: watermark and artifact columns (inheritance and artifacts: on the unmarked samples S_t)
WATERMARK_TABLE = declared(("generation", "wm_psnr", "wm_changed_fraction", "inherit_bit_acc",
                            "inherit_detect_rate", "inherit_log10p_median", "inherit_z_median",
                            "inherit_scored_fraction", "radio_log10p", "artifact_energy",
                            "artifact_energy_se", "artifact_energy_growth", "band_energy_ratio",
                            "band_energy_ratio_growth"))
#: filter columns (the filter runs on the pool before generation t is fitted; real_fraction and
#: n_pool describe the pool after it)
FILTER_TABLE = declared(("generation", "filter_n_in", "filter_synth_caught", "filter_synth_missed",
                         "filter_tpr", "filter_real_dropped", "filter_real_drop_rate",
                         "real_fraction_before", "real_fraction", "n_pool", "filter_trained",
                         "detector_train_from", "detector_train_acc", "detector_calib_fpr"))
#: settings of the watermark metrics (constant over a run)
WATERMARK_SETTINGS = declared(("wm_method", "wm_bits", "wm_alpha", "wm_text_settings",
                               "artifact_n_probe",
                               "artifact_band_fraction", "growth_baseline"))
#: the key table of report.md when watermark/filter columns exist (filter FPR =
#: filter_real_drop_rate, growth = artifact_energy_growth)
KEY_TABLE = declared(("generation", "real_fraction", "precision", "recall", "density", "coverage",
                      "fid", "inherit_bit_acc", "inherit_detect_rate", "artifact_energy",
                      "artifact_energy_growth", "filter_tpr", "filter_real_drop_rate"))
#: the table printed after a run: at most 12 of these exist in a run on vector or image data
#: (with or without watermark and filter stages), 14 in a text run with a watermark filter
CONSOLE_TABLE = declared(("generation", "n_pool", "real_fraction", "precision", "recall",
                          "coverage", "fid", "ppl_real", "ppl_ref", "distinct_2", "tail_mass",
                          "spread_ratio", "w2_to_true", "logdet_cov",
                          "inherit_detect_rate", "artifact_energy_growth", "filter_tpr",
                          "filter_real_drop_rate"))
#: panels of plots/artifacts.png: (title, ((column, legend), ...), reference line: a value, a
#: column whose first value is used, or None); a column ``<c>_se`` next to ``<c>`` is drawn as
#: ±2·se error bars
ARTIFACT_PANELS = (
    ("inheritance: bit accuracy", (("inherit_bit_acc", "bit accuracy on S_t"),), 0.5),
    ("inheritance: detection rate", (("inherit_detect_rate", "detected on S_t"),), "wm_alpha"),
    ("artifact energy (watermark layers)", (("artifact_energy", "artifact energy"),), 0.0),
    ("band energy ratio (vs real data)", (("band_energy_ratio", "band energy ratio"),), 1.0),
    ("growth factors", (("artifact_energy_growth", "artifact energy"),
                        ("band_energy_ratio_growth", "band energy ratio")), 1.0),
    ("filter", (("filter_tpr", "TPR (synthetic caught)"),
                ("filter_real_drop_rate", "FPR (real dropped)")), None),
    ("real fraction of the pool", (("real_fraction_before", "before filter"),
                                   ("real_fraction", "trained on")), None),
)
declared(c for _, lines, ref in (*ARTIFACT_PANELS, CAS_PANEL)
         for c in (*(col for col, _ in lines), *((ref,) if isinstance(ref, str) else ())))
declared(("family", "history", "bias", "filter_n_in"))          # named in the code below
#: columns whose presence means the run has a watermark or filter stage
WATERMARK_COLUMNS = tuple(c for c in WATERMARK_TABLE + FILTER_TABLE
                          if c not in ("generation", "real_fraction", "n_pool"))


def _number(value: Any, finite: bool = True) -> float | None:
    """A cell as a float; None if empty, text, NaN or (with ``finite``) infinite."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) or (finite and math.isinf(x)) else x


def _cell(value: Any) -> str:
    x = _number(value)
    if x is None:
        return str(value)
    return str(int(x)) if x.is_integer() and abs(x) < 1e9 else f"{x:.4g}"


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """The ``columns`` some row has (non-empty) as a markdown table; every requested column must
    be declared (UndeclaredColumn otherwise), so a rename cannot silently empty a table."""
    cols = [c for c in declared(columns) if any(c in r and r[c] != "" for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _series(rows: list[dict[str, Any]], name: str) -> list[tuple[float, float, float]]:
    """(generation, value, se) of the rows where both are numbers (se NaN when absent)."""
    points = []
    for r in rows:
        g, v = _number(r.get("generation")), _number(r.get(name))
        if g is not None and v is not None:
            se = _number(r.get(f"{name}_se"))
            points.append((g, v, math.nan if se is None else se))
    return points


Panel = tuple[str, tuple[tuple[str, str], ...], Union[float, str, None]]

#: path -> (what its PNG was drawn from, the file's size and mtime once written), for the PNGs
#: this process drew: a report rewritten from the same rows (a run's final report repeats its
#: last generation's) keeps such a file instead of drawing it again
_DRAWN: dict[str, tuple[str, int, int]] = {}


def plot_panels(rows: list[dict[str, Any]], panels: tuple[Panel, ...], path: Path,
                title: str = "") -> bool:
    """One panel per entry of ``panels`` with data (see :data:`ARTIFACT_PANELS`), against
    generation, written atomically to ``path``; False (and nothing written) if no panel has data.
    A file this process drew from the same data, unchanged since, is kept as it is."""
    from matplotlib.ticker import MaxNLocator

    present = [(name, [(col, label, _series(rows, col)) for col, label in lines], ref)
               for name, lines, ref in panels]
    present = [(name, [ln for ln in lines if ln[2]], ref) for name, lines, ref in present]
    present = [(name, lines, _number(rows[0].get(ref)) if isinstance(ref, str) else ref)
               for name, lines, ref in present if lines]
    if not present:
        return False
    drawn_from, where = repr((present, title)), str(Path(path).resolve())
    try:
        stat = Path(path).stat()
        if _DRAWN.get(where) == (drawn_from, stat.st_size, stat.st_mtime_ns):
            return True
    except OSError:
        pass
    cols = min(3, len(present))
    nrows = math.ceil(len(present) / cols)
    fig, axes = new_figure(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax, (name, lines, ref) in zip(axes.flat, present):
        bars = False
        for col, label, points in lines:
            g, v, se = zip(*points)
            if any(math.isfinite(e) for e in se):
                ax.errorbar(g, v, yerr=[2 * e if math.isfinite(e) else 0 for e in se],
                            marker="o", capsize=3, label=label)
                bars = True
            else:
                ax.plot(g, v, marker="o", label=label)
        if ref is not None:
            ax.axhline(ref, color="grey", linestyle=":", linewidth=1)
        if len(lines) > 1:
            ax.legend(fontsize="small")
        ax.set_title(f"{name} ±2 se" if bars else name)
        ax.set_xlabel("generation")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path, dpi=100)
    stat = Path(path).stat()
    _DRAWN[where] = (drawn_from, stat.st_size, stat.st_mtime_ns)
    return True


def plot_metrics(rows: list[dict[str, Any]], path: Path, title: str = "") -> bool:
    """One panel per metric in :data:`PLOTTED` (and :data:`CAS_PANEL` after kid) against
    generation; False if nothing to plot."""
    panels = [(name, ((name, name),), None) for name in PLOTTED]
    panels.insert(PLOTTED.index("kid") + 1, CAS_PANEL)
    return plot_panels(rows, tuple(panels), path, title)


def has_watermark_columns(rows: list[dict[str, Any]]) -> bool:
    return any(r.get(c, "") != "" for r in rows for c in WATERMARK_COLUMNS)


def _settings_line(first: dict[str, Any], columns: tuple[str, ...]) -> str:
    return ", ".join(f"{c} = {first[c]}" for c in columns if first.get(c, "") != "")


def watermark_settings_lines(rows: list[dict[str, Any]]) -> list[str]:
    """What the watermark and filter columns are computed on (report.md's header lines)."""
    settings = _settings_line(rows[0], WATERMARK_SETTINGS)
    lines = []
    if rows[0].get("wm_method", "") != "":     # (a classifier filter runs without a watermark)
        lines.append("- watermark metrics computed on: " + (settings + "; " if settings else "")
                     + "inheritance (bit accuracy, detection rate at wm_alpha) and artifact "
                       "energy on the unmarked samples S_t, before the watermark stage; growth = "
                       "value ÷ value at generation growth_baseline; wm_psnr: marked vs unmarked "
                       "pooled samples")
    if any(r.get("filter_n_in", "") != "" for r in rows):
        lines.append("- filter: runs on the pool before generation t is fitted; TPR = filter_tpr "
                     "(synthetic samples caught), FPR = filter_real_drop_rate (real samples "
                     "dropped); real_fraction and n_pool describe the pool after it")
    if rows[0].get("filter_kind", "") != "":
        lines.append(f"- classifier filter: {rows[0].get('filter_detector', '?')}, trained at "
                     "generation t on the reference split's training part (real) against the "
                     "held-out draws of earlier models named in detector_train_from (synthetic), "
                     "never on the pool; threshold calibrated on held-out real images; "
                     "generation 1 passes the pool through (filter_trained=False)")
    return lines


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md``, ``plots/metrics.png`` and (with watermark or filter columns)
    ``plots/artifacts.png`` from ``results.csv``; returns report.md."""
    from madmark.rundir import read_csv

    run_dir = Path(run_dir)
    name = run_dir.resolve().name
    rows = read_csv(run_dir / "results.csv")
    status_path = run_dir / "status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    first = rows[0] if rows else {}
    watermarked = has_watermark_columns(rows)
    lines = [f"# madmark run report: {name}", ""]
    lines.append(f"- loop: {first.get('family', '?')} ({first.get('history', '?')}), "
                 f"bias λ = {first.get('bias', '?')}, generations finished: {len(rows)}"
                 + (f" of {status['generations']}" if "generations" in status else "")
                 + f", status: {status.get('state', 'unknown')}")
    settings = _settings_line(first, SETTINGS)
    if settings:
        lines.append("- metrics computed on: " + settings)
    if watermarked:
        lines += watermark_settings_lines(rows)
    lines += ["", markdown_table(rows, KEY_TABLE if watermarked else TABLE), ""]
    if plot_metrics(rows, run_dir / "plots" / "metrics.png", title=name):
        lines += ["![metrics against generation](plots/metrics.png)", ""]
    if watermarked:
        if plot_panels(rows, ARTIFACT_PANELS, run_dir / "plots" / "artifacts.png",
                       title=name):
            lines += ["![watermark inheritance, artifacts and filter against generation]"
                      "(plots/artifacts.png)", ""]
        lines += ["## Loop and fidelity", "", markdown_table(rows, TABLE), ""]
        for name, table in (("Watermark and artifacts", WATERMARK_TABLE),
                            ("Filter", FILTER_TABLE)):
            if any(r.get(c, "") != "" for r in rows for c in table if c in WATERMARK_COLUMNS):
                lines += [f"## {name}", "", markdown_table(rows, table), ""]
    grids = sorted((run_dir / "samples").glob("g*.png"))
    if grids:
        lines.append("Samples: " + ", ".join(f"[{p.stem}](samples/{p.name})" for p in grids))
        lines += ["", f"![last generation](samples/{grids[-1].name})", ""]
    if first:
        lines += report_section(first)
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
