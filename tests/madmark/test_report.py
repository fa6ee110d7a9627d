"""report.md and plots are written by a run and rebuilt by `madmark report` from results.csv alone."""
import math

import pytest

from madmark.console import format_table
from madmark.report import (ARTIFACT_PANELS, CONSOLE_TABLE, FILTER_TABLE, KEY_TABLE, SETTINGS,
                            TABLE, WATERMARK_TABLE, write_report)
from madmark.rundir import rows_to_csv
from tests.madmark.conftest import FAST, copy_run


def test_report_is_rebuilt_from_results_csv(cli, tmp_path, shared_run):
    run = copy_run(shared_run(*FAST)[0], tmp_path / "copy")          # the test removes files
    report = (run / "report.md").read_text()
    assert "| generation |" in report and "w2_to_true" in report
    assert (run / "plots" / "metrics.png").stat().st_size > 1000

    (run / "report.md").unlink()
    (run / "plots" / "metrics.png").unlink()
    for name in ("state", "config.yaml"):                       # results.csv alone suffices
        path = run / name
        path.rename(tmp_path / name)
    code, out, _ = cli("report", str(run))
    assert code == 0 and "report.md" in out
    assert (run / "report.md").read_text() == report
    assert (run / "plots" / "metrics.png").is_file()


def test_report_of_a_folder_without_results_is_an_error(cli, tmp_path):
    code, _, err = cli("report", str(tmp_path))
    assert code == 2 and "results.csv" in err


# ---- watermark, artifact and filter columns (synthetic results.csv) -----------------------------

LOOP = {"family": "fully_synthetic", "history": "accumulate", "bias": 0.9, "n_pool": 500,
        "origin_counts": "g0=500", "features": "inception", "n_real_eval": 500,
        "n_fake_eval": 500, "k": 5, "spread_ratio": 0.9, "spread_n_reference": 500}
WATERMARK = {"wm_method": "spread_spectrum", "wm_bits": 32, "wm_alpha": 0.01,
             "artifact_n_probe": 64, "artifact_band_fraction": 0.5, "growth_baseline": 2}


def synthetic_rows(generations=4, watermark=True):
    """Rows shaped like the loop's: fidelity metrics, and with ``watermark`` the watermark stage,
    artifacts (unmarked S_t) and filter columns; generation 1 has no synthetic data (NaN TPR)."""
    rows = []
    for t in range(1, generations + 1):
        row = {"generation": t, **LOOP, "real_fraction": 1.0 if t == 1 else 0.25,
               "precision": 0.7 - 0.05 * t, "recall": 0.6 - 0.1 * t, "density": 0.9,
               "coverage": 0.8 - 0.02 * t, "fid": 10.0 + 3 * t}
        if watermark:
            energy = 0.01 if t == 1 else 0.2 * 1.5 ** (t - 2)
            row.update(WATERMARK, wm_psnr=40.1, inherit_bit_acc=0.5 + 0.05 * t,
                       inherit_detect_rate=0.01 * t ** 2, inherit_log10p_median=-0.3 * t,
                       artifact_energy=energy, artifact_energy_se=0.02,
                       artifact_energy_growth=energy / 0.2, band_energy_ratio=1 + 0.1 * t,
                       band_energy_ratio_growth=(1 + 0.1 * t) / 1.2, filter_n_in=600,
                       filter_synth_caught=0 if t == 1 else 400 + t,
                       filter_synth_missed=0 if t == 1 else 50 - t,
                       filter_tpr=math.nan if t == 1 else (400 + t) / 450,
                       filter_real_dropped=t, filter_real_drop_rate=t / 150,
                       real_fraction_before=1.0 if t == 1 else 0.25)
        rows.append(row)
    return rows


def write_run(path, rows):
    path.mkdir(parents=True)
    (path / "results.csv").write_text(rows_to_csv(rows))
    return path


def table_after(report: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body cells of the first markdown table whose header starts so."""
    lines = report.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[i].strip("|").split("|")]
    body = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        body.append([c.strip() for c in line.strip("|").split("|")])
    return header, body


def same(cell: str, value) -> bool:
    """A 4-significant-digit cell shows ``value`` (NaN shows as nan)."""
    if isinstance(value, float) and math.isnan(value):
        return cell == "nan"
    if isinstance(value, str):
        return cell == value
    return math.isclose(float(cell), float(value), rel_tol=5e-4, abs_tol=1e-12)


def test_report_shows_watermark_artifact_and_filter_columns(tmp_path):
    rows = synthetic_rows()
    run = write_run(tmp_path / "run", rows)
    report = write_report(run).read_text()

    header, body = table_after(report, "| generation | real_fraction |")
    assert header == list(KEY_TABLE)                              # every key column present
    for row, cells in zip(rows, body, strict=True):
        for column, cell in zip(header, cells):
            assert same(cell, row[column]), (column, cell, row[column])
    for table in (TABLE, WATERMARK_TABLE, FILTER_TABLE):       # and the detailed tables
        present = [c for c in table if c in rows[0]]
        assert "| " + " | ".join(present) + " |" in report
    assert ("watermark metrics computed on: wm_method = spread_spectrum, wm_bits = 32, "
            "wm_alpha = 0.01, artifact_n_probe = 64, artifact_band_fraction = 0.5, "
            "growth_baseline = 2") in report
    assert "unmarked samples S_t" in report and "filter_real_drop_rate" in report
    for plot in ("metrics", "artifacts"):
        assert f"(plots/{plot}.png)" in report
        assert (run / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_watermark_columns_is_unchanged(tmp_path):
    run = write_run(tmp_path / "run", synthetic_rows(watermark=False))
    report = write_report(run).read_text()
    assert "watermark" not in report and "artifacts.png" not in report
    assert not (run / "plots" / "artifacts.png").exists()
    header, _ = table_after(report, "| generation |")
    assert header == [c for c in TABLE if c in LOOP or c in synthetic_rows(1, False)[0]]


def test_artifact_plot_needs_only_the_columns_present(tmp_path):
    dropped = ("filter_", "band_", "artifact_", "real_fraction_")
    rows = [{k: v for k, v in r.items() if not k.startswith(dropped)}     # inheritance only
            for r in synthetic_rows()]
    run = write_run(tmp_path / "run", rows)
    report = write_report(run).read_text()
    assert (run / "plots" / "artifacts.png").is_file()
    assert "filter:" not in report and "## Filter" not in report


def test_console_table_stays_readable():
    """The table printed after a run has at most 12 columns, whatever stages the run has."""
    image_run = synthetic_rows()
    vector_run = [{"generation": t, "n_pool": 300, "real_fraction": 0.0, "origin_counts": "g1=300",
                   "spread_ratio": 1.0, "w2_to_true": 0.1, "logdet_cov": 0.2, "trace_cov": 2.0,
                   "spread_n_reference": 300, "moments_from": "model"} for t in (1, 2)]
    for rows in (image_run, vector_run, synthetic_rows(watermark=False)):
        text = format_table(rows, CONSOLE_TABLE, SETTINGS)
        header = text.splitlines()[0].split()
        assert 2 < len(header) <= 12 and header[0] == "generation"
    assert {"inherit_detect_rate", "filter_tpr", "filter_real_drop_rate"} <= set(
        format_table(image_run, CONSOLE_TABLE).splitlines()[0].split())


@pytest.mark.parametrize("panel", ARTIFACT_PANELS, ids=lambda p: p[0])
def test_artifact_panels_name_known_columns(panel):
    columns = set(WATERMARK_TABLE) | set(FILTER_TABLE)
    assert {column for column, _ in panel[1]} <= columns
