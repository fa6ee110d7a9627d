"""madmark report <sweep_dir>: one summary of a Hydra multirun, runs labelled by their overrides."""
import csv
import math
from pathlib import Path

import pytest

from madmark.rundir import read_csv, rows_to_csv
from madmark.sweep_report import SweepRun, label_runs, write_sweep_report
from tests.madmark.conftest import run_dirs

SWEEP = ["data=gaussian", "model=gaussian", "loop.generations=3", "data.dim=2", "data.n_train=300",
         "data.n_reference=300", "eval.enabled=false", "progress=false", "name=sweep"]


def tables(markdown: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Each '## <title>' section's table: (header cells, body rows of cells)."""
    found, title, lines = {}, None, markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            title = line[3:]
        elif title and line.startswith("|") and title not in found:
            body = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                body.append([c.strip() for c in row.strip("|").split("|")])
            found[title] = ([c.strip() for c in line.strip("|").split("|")], body)
    return found


def close(cell: str, value: str) -> bool:
    return math.isclose(float(cell), float(value), rel_tol=5e-4)      # 4 significant digits


def test_a_real_multirun_gets_one_row_per_run(cli, tmp_path):
    code, _, err = cli("run", "-m", *SWEEP, "loop.bias=1.0,0.8")
    assert code == 0, err
    jobs = run_dirs(tmp_path / "outputs" / "sweep")
    assert [p.name for p in jobs] == ["0", "1"]
    sweep = jobs[0].parent

    code, out, err = cli("report", str(sweep))
    assert code == 0, err
    assert "summary.md" in out
    results = {"loop.bias=1.0": read_csv(sweep / "0" / "results.csv"),
               "loop.bias=0.8": read_csv(sweep / "1" / "results.csv")}
    assert results["loop.bias=0.8"][0]["bias"] == "0.8"            # labels name the right job

    found = tables((sweep / "summary.md").read_text())
    assert {"spread_ratio", "w2_to_true", "Final generation"} <= set(found)
    for metric in ("spread_ratio", "w2_to_true"):
        header, body = found[metric]
        assert header == ["run", "g1", "g2", "g3"]
        assert [row[0] for row in body] == ["loop.bias=1.0", "loop.bias=0.8"]
        for label, *cells in body:
            assert all(close(c, r[metric]) for c, r in zip(cells, results[label], strict=True))
    header, body = found["Final generation"]
    for label, generation, *cells in body:
        last = results[label][-1]
        assert generation == "3"
        assert all(close(c, last[m]) for c, m in zip(cells, header[2:], strict=True))

    summary = list(csv.DictReader(open(sweep / "summary.csv")))
    assert len(summary) == 6
    for row in summary:
        job_row = results[row["label"]][int(row["generation"]) - 1]
        assert {k: row[k] for k in job_row} == job_row                  # the run's row, verbatim
        assert row["label"] in row["overrides"] and "data=gaussian" in row["overrides"]
    assert (sweep / "plots" / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert (sweep / "0" / "report.md").is_file()               # single runs keep their report


def synthetic_sweep(root: Path, overrides: list[list[str]], generations: int = 2) -> Path:
    for job, ovr in enumerate(overrides):
        run = root / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in ovr))
        rows = [{"generation": t, "precision": 0.5 + 0.1 * job - 0.01 * t,
                 "recall": 0.4 - 0.01 * t, "inherit_detect_rate": 0.1 * t,
                 "inherit_bit_acc": 0.5 + 0.02 * t, "artifact_energy": 0.3 * t,
                 "artifact_energy_growth": t / 2, "filter_tpr": 0.9}
                for t in range(1, generations + 1)]
        (run / "results.csv").write_text(rows_to_csv(rows))
    return root


def test_watermark_metrics_get_a_table_each(tmp_path):
    sweep = synthetic_sweep(tmp_path / "sweep", [["loop.bias=0.8", "watermark=spread_spectrum"],
                                                 ["loop.bias=0.8", "watermark=none"]])
    found = tables(write_sweep_report(sweep).read_text())
    for metric in ("precision", "recall", "inherit_detect_rate", "inherit_bit_acc",
                   "artifact_energy", "artifact_energy_growth", "filter_tpr"):
        header, body = found[metric]
        assert header == ["run", "g1", "g2"]
        assert [row[0] for row in body] == ["watermark=spread_spectrum", "watermark=none"]
    assert found["inherit_detect_rate"][1][0][1:] == ["0.1", "0.2"]


def test_labels_are_the_overrides_that_differ():
    def runs(*overrides):
        return [SweepRun(str(i), Path(str(i)), list(o), []) for i, o in enumerate(overrides)]

    swept = runs(["data=gaussian", "loop.bias=1.0", "seed=0"], ["data=gaussian", "loop.bias=0.8",
                                                                   "seed=0"],
                 ["data=gaussian", "loop.bias=1.0", "seed=1"])
    label_runs(swept)
    assert [r.label for r in swept] == ["loop.bias=1.0 seed=0", "loop.bias=0.8 seed=0",
                                        "loop.bias=1.0 seed=1"]
    same = runs(["data=gaussian"], ["data=gaussian"], [])           # indistinguishable runs
    label_runs(same)
    assert [r.label for r in same] == ["data=gaussian (job 0)", "data=gaussian (job 1)", "job 2"]


def test_a_folder_without_runs_is_a_one_line_error(cli, tmp_path):
    (tmp_path / "empty_job").mkdir()
    code, _, err = cli("report", str(tmp_path))
    assert code == 2 and err.startswith("madmark: error: ") and len(err.strip().splitlines()) == 1
    assert "results.csv" in err and " — " in err


@pytest.mark.parametrize("jobs", [["10", "2", "1"]])
def test_jobs_are_in_numeric_order(tmp_path, jobs):
    root = tmp_path / "sweep"
    for job in jobs:
        (root / job).mkdir(parents=True)
        (root / job / "results.csv").write_text(rows_to_csv([{"generation": 1, "recall": 0.5}]))
    write_sweep_report(root)
    assert [r["job"] for r in read_csv(root / "summary.csv")] == ["1", "2", "10"]


def _fake_run(root: Path, job: str, overrides: list[str], energy: list[float]) -> None:
    folder = root / job
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "results.csv").write_text(rows_to_csv(
        {"generation": g, "artifact_energy": e, "recall": 0.5 - 0.1 * g}
        for g, e in enumerate(energy, start=1)))


def test_runs_are_compared_with_their_control_arm(tmp_path):
    _fake_run(tmp_path, "0", ["watermark=a", "arm=control"], [0.8, 1.0, 1.1])
    _fake_run(tmp_path, "1", ["watermark=a", "arm=watermark"], [0.8, 2.0, 3.5])
    _fake_run(tmp_path, "2", ["watermark=b", "arm=control"], [0.4, 0.5])
    _fake_run(tmp_path, "3", ["watermark=b", "arm=watermark"], [0.4, 1.5])
    found = tables(write_sweep_report(tmp_path).read_text())
    header, body = found["artifact_energy − control"]
    assert header == ["run − its control", "g1", "g2", "g3"]
    assert body == [["watermark=a arm=watermark", "0", "1", "2.4"],
                    ["watermark=b arm=watermark", "0", "1", ""]]
    _, recall = found["recall − control"]
    assert [row[1:3] for row in recall] == [["0", "0"], ["0", "0"]]


def test_no_control_arm_no_comparison(tmp_path):
    _fake_run(tmp_path, "0", ["watermark=a"], [0.8, 1.0])
    _fake_run(tmp_path, "1", ["watermark=b"], [0.4, 0.5])
    assert "Against the control arm" not in write_sweep_report(tmp_path).read_text()


def model_sections(markdown: str) -> dict[str, list[list[str]]]:
    """Each '### model=<m>' table's body rows."""
    out, lines = {}, markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("### model="):
            body = []
            for row in lines[i + 4:]:
                if not row.startswith("|"):
                    break
                body.append([c.strip() for c in row.strip("|").split("|")])
            out[line[len("### model="):]] = body
    return out


def test_a_sweep_across_models_gets_one_table_per_model(tmp_path):
    _fake_run(tmp_path, "0", ["model=pca_gmm", "arm=control"], [0.8, 1.0])
    _fake_run(tmp_path, "1", ["model=pca_gmm", "arm=watermark"], [0.8, 2.0])
    _fake_run(tmp_path, "2", ["model=vae", "arm=control"], [0.1, 0.2])
    _fake_run(tmp_path, "3", ["model=vae", "arm=watermark"], [0.1, 0.5])
    sections = model_sections(write_sweep_report(tmp_path).read_text())
    assert list(sections) == ["pca_gmm", "vae"]
    # run, g, bit acc, detect rate, energy − control, radio, precision, recall, fid
    assert [row[:2] + row[4:5] for row in sections["pca_gmm"]] == [
        ["arm=control", "1", ""], ["arm=control", "2", ""],
        ["arm=watermark", "1", "0"], ["arm=watermark", "2", "1"]]
    assert [row[4] for row in sections["vae"]][2:] == ["0", "0.3"]
    assert sections["vae"][3][7] == "0.3"                                  # recall 0.5 − 0.1·2
    _fake_run(tmp_path / "one", "0", ["model=vae", "arm=control"], [0.1])
    _fake_run(tmp_path / "one", "1", ["model=vae", "arm=watermark"], [0.1])
    assert "By model" not in write_sweep_report(tmp_path / "one").read_text()
