"""Seconds per default-size generation with ``filter=classifier`` against the same generation
with ``filter=none``, as a ratio (issue 16 budget: the classifier filter and CAS together add at
most 30 % on 2 CPU cores).

Run (from the repository root; ~6 min on 2 CPU cores):

    python benchmarks/classifier_filter_speed.py
    python benchmarks/classifier_filter_speed.py --repeats 3 --extra filter.kind=probe
    # the issue's budget: the classifier filter and CAS together, at the default run's pool size
    python benchmarks/classifier_filter_speed.py --extra eval.cas=true \
        --common loop.n_real=2000 loop.n_synthetic=2000

Each case is ``madmark run loop=fresh_data`` at its defaults (mnist5k, PCA+GMM, 1,000 fresh real
digits + 1,000 synthetic per generation, LeNet metrics, sample grids), one torch thread, in a
fresh output folder, run twice: for 1 and for ``--generations`` generations. A generation's cost
is the difference of the two runs' CPU seconds (user + system of the child process, from
``getrusage``) over the extra generations — so process start-up, data loading and the LeNet
cancel, and only generations t ≥ 2 count (at generation 1 the classifier filter has nothing to
train on). Wall seconds are printed too (between consecutive checkpoints, ``state/g<t>.pt``
modification times). The cases alternate ``--repeats`` times; medians are printed, with the
machine load before and after. On a shared machine both vary by tens of percent from run to run,
so the script also times the classifier filter's own work in-process (``classifier_s``: the
held-out draw of 500 PCA+GMM samples, training and calibrating the detector, flagging a
1,000 + 1,000 pool; median of ``--repeats`` × 3) and prints 1 + classifier_s ÷ the ``none``
generation's wall seconds as a second estimate of the ratio.

Measured (2 shared CPU cores, load 1–2, 2 repeats): a ``none`` generation 2.79 s wall (2.68 s
CPU), a ``classifier`` one 3.12 s (2.83 s CPU): ratio 1.12 wall, 1.06 CPU. The filter's own work
is 0.66 s (ratio_direct 1.24); the whole generation grows by less because the filter drops the
pool's synthetic half, so the PCA+GMM fits 1,000 samples instead of 2,000.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def one_run(overrides: list[str], generations: int) -> tuple[float, list[float]]:
    """(CPU seconds of one ``madmark run``, wall seconds of its generations 2..T)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory(prefix="clsspeed_") as tmp:
        cmd = [sys.executable, "-m", "madmark", "run", "loop=fresh_data", "progress=false",
               f"loop.generations={generations}", f"out_dir={tmp}", *overrides]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(overrides)} failed:\n{done.stderr[-2000:]}")
        times = sorted(p.stat().st_mtime for p in Path(tmp).glob("**/state/g*.pt"))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, [b - a for a, b in zip(times, times[1:])]


def generation_cpu_seconds(overrides: list[str], generations: int) -> tuple[float, list[float]]:
    """(CPU seconds per generation t >= 2, their wall seconds) of one case."""
    base, _ = one_run(overrides, 1)
    full, wall = one_run(overrides, generations)
    return (full - base) / (generations - 1), wall


def classifier_seconds(repeats: int, extra: list[str]) -> list[float]:
    """Wall seconds of the classifier filter's work at generation 2 of the default fresh-data run
    (its config composed as ``madmark run`` composes it), measured in this process."""
    import time

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import configs  # noqa: F401  (the schemas the yamls start from)
    from madcore.rng import generator
    from madmark.classifier_filter import build_classifier_filter
    from madmark.data import MNIST5k

    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("config", overrides=["loop=fresh_data", "filter=classifier", *extra])
    splits = MNIST5k(seed=0, n_reference=1000).load()
    model = instantiate(cfg.model)
    model.fit(splits.train[:1000], generator(0, 1, "fit"))
    pool = torch.cat([splits.train[1000:2000], model.sample(1000, generator=generator(0, 1, "s"))])
    out = []
    for _ in range(repeats):
        f = build_classifier_filter(cfg.filter, splits, "mnist5k", 0, torch.device("cpu"))
        start = time.perf_counter()
        f.remember(1, model.sample(int(cfg.filter.n_draw),
                                   generator=generator(0, 1, "filter-train")))
        f.flag(2, pool)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--extra", nargs="*", default=[], help="overrides of the classifier case")
    ap.add_argument("--common", nargs="*", default=[], help="overrides of both cases")
    args = ap.parse_args()
    cases = {"none": ["filter=none", *args.common],
             "classifier": ["filter=classifier", *args.common, *args.extra]}
    print(f"cases: {cases}")
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    wall: dict[str, list[float]] = {name: [] for name in cases}
    print(f"loadavg_before: {loadavg()}")
    for _ in range(args.repeats):
        for name, overrides in cases.items():
            c, w = generation_cpu_seconds(overrides, args.generations)
            cpu[name].append(c)
            wall[name] += w
    print(f"loadavg_after: {loadavg()}")
    for name in cases:
        print(f"generation_cpu_s_{name}: {statistics.median(cpu[name]):.2f} (runs: "
              f"{', '.join(f'{v:.2f}' for v in cpu[name])}); wall s: "
              f"{statistics.median(wall[name]):.2f} (median of {len(wall[name])})")
    direct = classifier_seconds(3 * args.repeats, args.extra)
    print(f"classifier_s: {statistics.median(direct):.2f} (runs: "
          f"{', '.join(f'{v:.2f}' for v in direct)})")
    print(f"ratio_direct (1 + classifier_s / wall s of none): "
          f"{1 + statistics.median(direct) / statistics.median(wall['none']):.3f}")
    ratio = statistics.median(cpu["classifier"]) / statistics.median(cpu["none"])
    print(f"ratio_classifier_vs_none (CPU): {ratio:.3f} (adds {100 * (ratio - 1):.0f} %)")
    wall_ratio = statistics.median(wall["classifier"]) / statistics.median(wall["none"])
    print(f"ratio_classifier_vs_none (wall): {wall_ratio:.3f}")


if __name__ == "__main__":
    main()
