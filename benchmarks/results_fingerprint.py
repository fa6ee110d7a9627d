"""Byte-identity check of a refactor: the default run's and every preset's results.

    python benchmarks/results_fingerprint.py --record fingerprints.json     # before the change
    python benchmarks/results_fingerprint.py --check fingerprints.json      # after it

Runs ``madmark run`` on its built-in default (in full) and on every ``configs/experiment`` preset
(shrunk: 2 generations, small pools, tiny neural configs, CPU), each in a fresh temporary folder
with one torch thread, and hashes (sha256) the run's ``results.csv`` (less its wall-clock
columns, TIMING_COLUMNS) and sample grids. ``--check``
exits 1 naming every case whose files differ. Numbers depend on the machine and torch build, so
record and check on the same machine; the point is "this change moved no number", not a golden
value across machines. A full pass takes about 6 minutes on 2 shared CPU cores.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_MNIST = ["loop.n_real=300", "loop.n_synthetic=300", "model.n_components=16",
              "model.gmm_components=4"]
#: name -> overrides after ``madmark run``; every preset under configs/experiment has one case.
CASES: dict[str, list[str]] = {
    "default": [],
    "default_watermark_filter": ["loop=synthetic_augmentation", "watermark=spread_spectrum",
                                 "filter=detector", "loop.generations=3", *TINY_MNIST],
    "gaussian_bias": ["experiment=gaussian_bias", "loop.generations=3"],
    "gaussian_fresh": ["experiment=gaussian_fresh", "loop.generations=3"],
    "mad_fully_synthetic": ["experiment=mad_fully_synthetic", "loop.generations=2", *TINY_MNIST],
    "mad_synthetic_augmentation": ["experiment=mad_synthetic_augmentation", "loop.generations=2",
                                   *TINY_MNIST],
    "mad_fresh_data": ["experiment=mad_fresh_data", "loop.generations=2", *TINY_MNIST],
    "autophagy_fully_synthetic": ["experiment=autophagy_fully_synthetic", "loop.generations=2",
                                  *TINY_MNIST],
    "autophagy_synthetic_augmentation": ["experiment=autophagy_synthetic_augmentation",
                                         "loop.generations=2", *TINY_MNIST],
    "autophagy_fresh_data": ["experiment=autophagy_fresh_data", "loop.generations=2",
                             *TINY_MNIST],
    "autophagy_robustness": ["experiment=autophagy_robustness", "loop.generations=2",
                             *TINY_MNIST],
    "autophagy_aware": ["experiment=autophagy_aware", "loop.generations=2", *TINY_MNIST],
    "filter_comparison": ["experiment=filter_comparison", "arm=classifier_filter",
                          "loop.generations=2", "filter.n_draw=200", *TINY_MNIST],
    "autophagy_robustness_digits32": ["experiment=autophagy_robustness", "watermark=digits32",
                                      "arm=control", "loop.generations=2", *TINY_MNIST],
    "mad_flow_2d": ["experiment=mad_flow_2d", "loop.generations=2", "data.n_train=500",
                    "data.n_reference=500", "model.steps=150", "model.batch_size=128"],
    "mad_wgan_mnist": ["experiment=mad_wgan_mnist", "model=wgan_gp_tiny", "loop.generations=2",
                       "loop.n_real=300", "loop.n_synthetic=300", "model.steps=20"],
    "mad_ddpm_mnist": ["experiment=mad_ddpm_mnist", "model=ddpm_tiny", "loop.generations=2",
                       "loop.n_real=200", "loop.n_synthetic=200", "model.train_steps=10",
                       "model.sample_steps=5"],
    "mad_ddpm_mnist_gpu": ["experiment=mad_ddpm_mnist_gpu", "device=cpu", "model=ddpm_tiny",
                           "loop.generations=2", "loop.n_real=200", "loop.n_synthetic=200",
                           "model.train_steps=10", "model.sample_steps=5"],
    "text_fully_synthetic": ["experiment=text_fully_synthetic", "loop.generations=2",
                             "loop.n_real=300", "eval.text_features=false"],
    "text_fresh_data": ["experiment=text_fresh_data", "loop.generations=2", "loop.n_real=300",
                        "loop.n_synthetic=300", "eval.text_features=false"],
    "text_autophagy_robustness": ["experiment=text_autophagy_robustness", "arm=watermark_filter",
                                  "loop.generations=2", "loop.n_real=300",
                                  "eval.text_features=false"],
}


#: results.csv columns that measure wall-clock speed: they differ from run to run by nature
TIMING_COLUMNS = ("fit_images_per_s",)


def results_bytes(path: Path) -> bytes:
    """results.csv as written, less TIMING_COLUMNS (a CSV rewritten only when it has them)."""
    text = path.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    drop = [i for i, name in enumerate(rows[0]) if name in TIMING_COLUMNS] if rows else []
    if not drop:
        return text.encode()
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(
        [[v for i, v in enumerate(r) if i not in drop] for r in rows])
    return out.getvalue().encode()


def run_case(overrides: list[str], workdir: Path) -> dict[str, str]:
    """sha256 of results.csv and of each samples/g<t>.png of one ``madmark run``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "madmark", "run", "progress=false", f"out_dir={workdir}",
           *overrides]
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(overrides) or 'default'} failed:\n{done.stderr[-3000:]}")
    (results,) = workdir.glob("**/results.csv")
    files = [results, *sorted(results.parent.glob("samples/*.png"))]
    data = {p: results_bytes(p) if p == results else p.read_bytes() for p in files}
    return {str(p.relative_to(results.parent)): hashlib.sha256(b).hexdigest()
            for p, b in data.items()}


def fingerprints(names: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"fp_{name}_") as tmp:
            out[name] = run_case(CASES[name], Path(tmp))
        print(f"{name}: {out[name]['results.csv'][:16]}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", type=Path, help="write the fingerprints to this JSON file")
    action.add_argument("--check", type=Path, help="compare with fingerprints recorded earlier")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="a subset of the cases")
    args = parser.parse_args()
    presets = {p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")}
    missing = presets - set(CASES)
    if missing:
        raise SystemExit(f"presets without a case: {sorted(missing)} — add them to CASES")
    names = args.only or list(CASES)
    found = fingerprints(names)
    if args.record:
        args.record.write_text(json.dumps(found, indent=2) + "\n")
        return 0
    recorded = json.loads(args.check.read_text())
    differ = [n for n in names if recorded.get(n) != found[n]]
    for name in differ:
        print(f"DIFFERS {name}: {recorded.get(name)} vs {found[name]}")
    print("byte-identical" if not differ else f"{len(differ)} of {len(names)} cases differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
