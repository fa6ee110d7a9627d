"""The autophagy-aware scorecard of a sweep: one row per watermark × model × loop, each property a
number, each threshold a pass or a fail.

    madmark run -m experiment=autophagy_aware          # watermark × loop × arm, model=pca_gmm
    madmark report <sweep_dir>                         # summary.md gains the scorecard,
                                                       # scorecard.csv holds it

A row gathers the ``arm=watermark`` run of one (watermark, model, loop, key_mode) and its
``arm=control`` twin (the same overrides but ``arm``; runs that differ only in ``seed`` are
averaged, and the spread over seeds is given). Generation 2 is the first whose model was trained on
marked data (the watermark stage marks S_1 before it enters pool 2). The properties (issue
"autophagy-aware watermark"):

1. idempotence: ``idem_layers`` and ``idem_psnr_db`` of the run's marking (eval.idempotence, on
   held-out real images); passes at |layers| <= 0.05 and >= 50 dB.
2. no accumulation: Δ_t = artifact_energy(t) − control's, in watermark layers; ``drift`` is
   max_{t >= 2} |Δ_t − Δ_2|; passes at <= 0.2 (needs >= 3 generations).
3. inheritance: the smallest ``inherit_detect_rate`` over t >= 2 (passes at >= 0.99; judged in
   fully synthetic loops only, where the model saw marked data alone), and the weakest
   radioactivity, max_{t >= 2} ``radio_log10p`` (passes at <= −6, the issue's p <= 1e-6 when
   10 % of the pool is marked: ``loop=fresh_data_marked10``).
4. per-generation keys (``watermark.key_mode=generation`` or ``message`` only): every generation's marked samples
   are found by their own key's detector, ``marked_detect_min`` = min_t ``wm_detect_rate``
   (passes at >= 0.99), and the layers of all keys together stay flat: ``drift_all_keys`` is the
   drift of ``artifact_energy_all_keys`` (eval.artifacts.stacked_layers) as in 2 (passes at
   <= 0.2).
5. quality: ``wm_psnr`` of generation 1's marking (passes at >= 34 dB on one-channel images, 38 dB
   on RGB, from ``wm_image_shape``), and precision, recall and FID minus the control's at the
   last generation (± the spread of that difference over seeds when the sweep has several).

A property the runs cannot say (too few generations, no radioactivity column) is left empty, not
passed; a marked run without a control twin, or without the idempotence columns (a run from before
them), has no row.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Optional

from madmark.columns import declared
from madmark.report import _cell, _number as report_number

#: the results.csv columns the scorecard reads
USED = declared(("generation", "family", "wm_image_shape", "idem_layers", "idem_psnr_db",
                 "artifact_energy", "artifact_energy_all_keys", "inherit_detect_rate",
                 "radio_log10p", "wm_psnr", "wm_detect_rate", "precision", "recall", "fid"))
IDEMPOTENT_LAYERS, IDEMPOTENT_DB = 0.05, 50.0
MAX_DRIFT = 0.2
MIN_DETECT, MAX_RADIO_LOG10P = 0.99, -6.0
MIN_PSNR = {1: 34.0, 3: 38.0}          # channels -> the quality floor of marking, dB

#: scorecard columns, in order
HEADER = ("watermark", "model", "loop", "key_mode", "seeds", "idem_layers", "idem_psnr_db",
          "energy_g2", "drift", "detect_min", "radio_log10p_max", "marked_detect_min",
          "drift_all_keys", "wm_psnr", "d_precision", "d_recall", "d_fid", "passes", "fails")
_AVERAGED = HEADER[5:17]               # the per-pair numbers averaged over seeds
#: scorecard.csv columns: HEADER, each difference from control followed by its spread over seeds
CSV_COLUMNS = tuple(c for name in HEADER
                    for c in ((name, f"{name}_sd") if name.startswith("d_") else (name,)))


def _number(value: Any) -> Optional[float]:
    """A results.csv cell as a float, ``inf`` kept (an idempotent mark's PSNR)."""
    return report_number(value, finite=False)


def _choices(run_dir: Path) -> dict[str, str]:
    """Hydra's group choices of a run (``.hydra/hydra.yaml``), {} when not recorded."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf
    choices = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.choices", default={}) or {}
    return {str(k): str(v) for k, v in dict(choices).items()}


def _series(run, column: str) -> dict[int, float]:
    out = {}
    for row in run.rows:
        g, v = _number(row.get("generation")), _number(row.get(column))
        if g is not None and v is not None:
            out[int(g)] = v
    return out


def _mean(values: list[float]) -> Optional[float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def _spread(values: list[float]) -> Optional[float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.stdev(values) if len(values) > 1 else None


def _drift(run, control, column: str) -> tuple[Optional[float], Optional[float]]:
    """(Δ_2, max_{t >= 2} |Δ_t − Δ_2|) of Δ_t = column(t) − control's, None where the runs
    cannot say (no column, or fewer than 3 generations)."""
    energy, twin = _series(run, column), _series(control, column)
    delta = {g: energy[g] - twin[g] for g in energy if g in twin}
    later = [g for g in sorted(delta) if g >= 2]
    drift = (max(abs(delta[g] - delta[2]) for g in later)
             if 2 in delta and len(later) >= 2 else None)
    return delta.get(2), drift


def _pair_properties(run, control) -> dict[str, Any]:
    """The properties of one (marked run, control run) pair (module docstring)."""
    out: dict[str, Any] = {}
    first = run.rows[0] if run.rows else {}
    out["idem_layers"] = _number(first.get("idem_layers"))
    out["idem_psnr_db"] = _number(first.get("idem_psnr_db"))
    out["wm_psnr"] = _series(run, "wm_psnr").get(1)
    out["energy_g2"], out["drift"] = _drift(run, control, "artifact_energy")
    out["drift_all_keys"] = _drift(run, control, "artifact_energy_all_keys")[1]
    marked = _series(run, "wm_detect_rate")
    out["marked_detect_min"] = min(marked.values(), default=None)
    detect = _series(run, "inherit_detect_rate")
    out["detect_min"] = min((detect[g] for g in detect if g >= 2), default=None)
    radio = _series(run, "radio_log10p")
    out["radio_log10p_max"] = max((radio[g] for g in radio if g >= 2), default=None)
    for metric in ("precision", "recall", "fid"):
        a, b = _series(run, metric), _series(control, metric)
        common = sorted(set(a) & set(b))
        out[f"d_{metric}"] = a[common[-1]] - b[common[-1]] if common else None
    return out


def _verdicts(row: dict[str, Any], channels: Optional[int]) -> tuple[list[str], list[str]]:
    """(properties passed, properties failed), by the issue's numbers 1-5 (3a detection, 3b
    radioactivity; 4 only with per-generation keys)."""
    checks: dict[str, Optional[bool]] = {}
    layers, db = row.get("idem_layers"), row.get("idem_psnr_db")
    checks["1"] = None if layers is None or db is None else (
        abs(layers) <= IDEMPOTENT_LAYERS and db >= IDEMPOTENT_DB)
    drift = row.get("drift")
    checks["2"] = None if drift is None else drift <= MAX_DRIFT
    detect = row.get("detect_min")
    judged = row.get("family") == "fully_synthetic"
    checks["3a"] = None if detect is None or not judged else detect >= MIN_DETECT
    radio = row.get("radio_log10p_max")
    checks["3b"] = None if radio is None else radio <= MAX_RADIO_LOG10P
    if row.get("key_mode") in ("generation", "message"):
        found, stacked = row.get("marked_detect_min"), row.get("drift_all_keys")
        checks["4"] = None if found is None or stacked is None else (
            found >= MIN_DETECT and stacked <= MAX_DRIFT)
    floor = MIN_PSNR.get(channels) if channels else None
    psnr = row.get("wm_psnr")
    checks["5"] = None if psnr is None or floor is None else psnr >= floor
    return ([k for k, v in checks.items() if v is True],
            [k for k, v in checks.items() if v is False])


def _channels(run) -> Optional[int]:
    """The marked images' channels (``wm_image_shape`` = "CxHxW"), None when not recorded."""
    shape = str(run.rows[0].get("wm_image_shape", "")) if run.rows else ""
    head = shape.split("x")[0]
    return int(head) if head.isdigit() else None


def scorecard_rows(pairs: list[tuple[Any, Any]]) -> list[dict[str, Any]]:
    """One dict per (watermark, model, loop, key_mode), in the sweep's order; :data:`HEADER`
    keys. ``pairs``: (marked run, its control run) of madmark.sweep_report.SweepRun, as
    ``control_pairs`` finds them; a run without the idempotence columns is left out."""
    groups: dict[tuple, list[tuple[Any, Any]]] = {}
    for run, control in pairs:
        if not any("idem_layers" in row for row in run.rows):
            continue                    # a run from before the scorecard
        choices, settings = _choices(run.path), run.settings
        key = tuple(choices.get(group, settings.get(group, "?"))
                    for group in ("watermark", "model", "loop"))
        groups.setdefault((*key, settings.get("watermark.key_mode", "run")), []).append(
            (run, control))
    out = []
    for (watermark, model, loop, key_mode), pairs in groups.items():
        props = [_pair_properties(run, control) for run, control in pairs]
        row: dict[str, Any] = {"watermark": watermark, "model": model, "loop": loop,
                               "key_mode": key_mode, "seeds": len(pairs)}
        for name in _AVERAGED:
            row[name] = _mean([p[name] for p in props])
        for name in ("d_precision", "d_recall", "d_fid"):
            row[f"{name}_sd"] = _spread([p[name] for p in props])
        channels = _channels(pairs[0][0])
        row["family"] = pairs[0][0].rows[0].get("family") if pairs[0][0].rows else None
        row["passes"], row["fails"] = (" ".join(v) for v in _verdicts(row, channels))
        out.append(row)
    return out


def scorecard_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: :data:`HEADER` columns, differences with their spread over seeds."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        cells = []
        for name in HEADER:
            value = row.get(name)
            cell = _cell("" if value is None else value)
            sd = row.get(f"{name}_sd")
            cells.append(f"{cell} ± {_cell(sd)}" if sd is not None and value is not None
                         else cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
