"""report.md and plots are written by a run and rebuilt by `madmark report` from results.csv alone."""
from tests.madmark.conftest import FAST, run_dirs


def test_report_is_rebuilt_from_results_csv(cli, tmp_path):
    assert cli("run", *FAST, "name=rep")[0] == 0
    (run,) = run_dirs(tmp_path / "outputs" / "rep")
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
