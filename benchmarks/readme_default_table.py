"""The README's default-run table, generated: what ``madmark run`` prints, and how much it varies.

    python benchmarks/readme_default_table.py --threads 1 2             # print both, and the spread
    python benchmarks/readme_default_table.py --threads 2 --write README.md

Runs the built-in default (``madmark run progress=false``) once per torch/OpenMP thread count in
``--threads`` (fresh processes, temporary output folders) and prints the console table each run
printed, then, per column, the largest difference between the runs (float columns of
results.csv, compared at full precision). ``--write`` puts the first run's console table, verbatim,
between the ``<!-- default-run:begin -->`` and ``<!-- default-run:end -->`` markers of the file,
with the machine it ran on. The LeNet feature cache is shared with normal runs
(``~/.cache/madmark``), so only the first run ever trains it.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- default-run:begin -->", "<!-- default-run:end -->"


def default_run(threads: int) -> tuple[str, list[dict[str, str]]]:
    """(console table as printed, results.csv rows) of one default run with ``threads`` threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory(prefix="default_run_") as tmp:
        done = subprocess.run([sys.executable, "-m", "madmark", "run", "progress=false",
                               f"out_dir={tmp}"], cwd=tmp, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"madmark run failed:\n{done.stderr[-3000:]}")
        (results,) = Path(tmp).glob("**/results.csv")
        with open(results, newline="") as f:
            rows = list(csv.DictReader(f))
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["generation"])
    end = next(i for i, line in enumerate(lines) if line.startswith("metrics computed on"))
    return "\n".join(lines[start:end + 1]), rows


def spread(runs: list[list[dict[str, str]]]) -> dict[str, float]:
    """Per numeric column, the largest |difference| between any run and the first, any row."""
    out: dict[str, float] = {}
    for column in runs[0][0]:
        try:
            values = [[float(r[column]) for r in rows] for rows in runs]
        except (ValueError, KeyError):
            continue
        out[column] = max(abs(a - b) for other in values[1:] for a, b in zip(values[0], other))
    return out


def write_block(path: Path, table: str, threads: int) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no {BEGIN} ... {END} block")
    where = f"{platform.machine()}, {os.cpu_count()} CPUs, {threads} thread(s)"
    block = (f"{BEGIN}\n```text\n$ madmark run          # {where}\n{table}\n```\n{END}")
    path.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text,
                           flags=re.S))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--write", type=Path, help="a Markdown file with the default-run markers")
    args = parser.parse_args()
    tables, runs = [], []
    for threads in args.threads:
        table, rows = default_run(threads)
        tables.append(table)
        runs.append(rows)
        print(f"--- {threads} thread(s)\n{table}\n", flush=True)
    if len(runs) > 1:
        moved = {k: v for k, v in spread(runs).items() if v > 0}
        print("largest difference from the first run, per column:",
              ", ".join(f"{k} {v:.3g}" for k, v in moved.items()) or "none (identical)")
        print("console tables identical:", all(t == tables[0] for t in tables))
    if args.write:
        write_block(args.write, tables[0], args.threads[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
