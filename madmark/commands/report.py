"""``madmark report <dir>``: rebuild a run's report, or write a sweep's summary.

A run directory (it holds results.csv): rewrites report.md and plots/ from results.csv alone.
A multirun folder (job subfolders holding results.csv, as ``madmark run -m`` writes): writes
summary.csv, summary.md and plots/summary.png there (madmark.sweep_report).
"""
from __future__ import annotations

from pathlib import Path

from madcore.errors import MadmarkError
from madmark.hydra_app import report_error
from madmark.report import write_report
from madmark.sweep_report import is_sweep, write_sweep_report

USAGE = """usage: madmark report <run_dir | sweep_dir>

A run directory (with results.csv): rewrites <run_dir>/report.md and <run_dir>/plots/*.png.
A multirun sweep folder (job subfolders with results.csv): writes <sweep_dir>/summary.csv,
<sweep_dir>/summary.md and <sweep_dir>/plots/summary.png (one row/line per run)."""


def main(args: list[str]) -> int:
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args and args[0] in ("-h", "--help") else 2
    folder = Path(args[0])
    try:
        if (folder / "results.csv").is_file():
            path = write_report(folder)
        elif is_sweep(folder):
            path = write_sweep_report(folder)
        else:
            raise MadmarkError(f"{folder} has no results.csv and no run subfolders with one",
                               "pass a run directory or a multirun folder written by madmark run")
    except MadmarkError as e:
        return report_error(e)
    print(f"wrote {path}")
    return 0
