"""``madmark report <run_dir>``: regenerate report.md and plots/ from a run's results.csv."""
from __future__ import annotations

import sys
from pathlib import Path

from madmark.errors import MadmarkError
from madmark.hydra_app import report_error
from madmark.report import write_report


def main(args: list[str]) -> int:
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: madmark report <run_dir>\n\nRewrites <run_dir>/report.md and "
              "<run_dir>/plots/*.png from <run_dir>/results.csv.")
        return 0 if args and args[0] in ("-h", "--help") else 2
    run_dir = Path(args[0])
    try:
        if not (run_dir / "results.csv").is_file():
            raise MadmarkError(f"{run_dir} has no results.csv",
                               "pass a run directory written by madmark run")
        path = write_report(run_dir)
    except MadmarkError as e:
        return report_error(e)
    print(f"wrote {path}", file=sys.stdout)
    return 0
