"""report.md and plots/metrics.png of a run, regenerated from results.csv alone.

    madmark report <run_dir>
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from loops.checkpoint import atomic_write_bytes, atomic_write_text

#: metrics plotted against generation, in panel order (absent columns are skipped)
PLOTTED = ("precision", "recall", "density", "coverage", "fid", "kid", "spread_ratio",
           "w2_to_true", "logdet_cov")
#: columns of the markdown table (absent ones are skipped)
TABLE = ("generation", "n_pool", "real_fraction", "origin_counts", "precision", "recall",
         "density", "coverage", "fid", "kid", "spread_ratio", "w2_to_true", "logdet_cov",
         "trace_cov")
#: columns naming what the metrics were computed on (constant over a run)
SETTINGS = ("features", "n_real_eval", "n_fake_eval", "k", "kid_subsets", "kid_subset_size",
            "spread_n_reference", "moments_from")


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _cell(value: Any) -> str:
    x = _number(value)
    if x is None:
        return str(value)
    return str(int(x)) if x.is_integer() and abs(x) < 1e9 else f"{x:.4g}"


def markdown_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    cols = [c for c in columns if any(c in r and r[c] != "" for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot_metrics(rows: list[dict[str, Any]], path: Path, title: str = "") -> bool:
    """One panel per metric in :data:`PLOTTED` against generation; False if nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for name in PLOTTED:
        points = [(_number(r.get("generation")), _number(r.get(name))) for r in rows]
        points = [(g, v) for g, v in points if g is not None and v is not None]
        if points:
            series[name] = points
    if not series:
        return False
    cols = min(3, len(series))
    nrows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax, (name, points) in zip(axes.flat, series.items()):
        ax.plot([g for g, _ in points], [v for _, v in points], marker="o")
        ax.set_title(name)
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return True


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and ``plots/metrics.png`` from ``results.csv``; returns report.md."""
    from madmark.rundir import read_csv

    run_dir = Path(run_dir)
    rows = read_csv(run_dir / "results.csv")
    status_path = run_dir / "status.json"
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    first = rows[0] if rows else {}
    lines = [f"# madmark run report: {run_dir.name}", ""]
    lines.append(f"- loop: {first.get('family', '?')} ({first.get('history', '?')}), "
                 f"bias λ = {first.get('bias', '?')}, generations finished: {len(rows)}"
                 + (f" of {status['generations']}" if "generations" in status else "")
                 + f", status: {status.get('state', 'unknown')}")
    settings = [f"{c} = {first[c]}" for c in SETTINGS if first.get(c, "") != ""]
    if settings:
        lines.append("- metrics computed on: " + ", ".join(settings))
    lines += ["", markdown_table(rows, TABLE), ""]
    if plot_metrics(rows, run_dir / "plots" / "metrics.png", title=run_dir.name):
        lines += ["![metrics against generation](plots/metrics.png)", ""]
    grids = sorted((run_dir / "samples").glob("g*.png"))
    if grids:
        lines.append("Samples: " + ", ".join(f"[{p.stem}](samples/{p.name})" for p in grids))
        lines += ["", f"![last generation](samples/{grids[-1].name})", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
