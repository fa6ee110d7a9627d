"""Where one generation of ``madmark run`` spends its time: seconds and share per stage.

Run (from the repository root; on 2 shared CPU cores ~0.5-1.5 min for pca_gmm, 3-7 min per deep
model at --generations 2; results and tables in docs/performance.md):

    OMP_NUM_THREADS=1 python benchmarks/generation_profile.py          # pca_gmm, 3 generations
    python benchmarks/generation_profile.py --model pca_gmm,vae,latent_diffusion --generations 2
    python benchmarks/generation_profile.py --watermark spread_spectrum --threads 2

Runs the real default experiment in-process (``madmark.cli.main(["run", ...])``: fully synthetic
loop on mnist5k, the chosen model, LeNet-feature precision/recall/density/coverage, FID and KID,
a sample grid and report per generation) into a temporary folder, with the functions of each
stage wrapped for the duration of the run (:func:`profile_run`). A stage's seconds are its *own*:
time spent in a nested timed stage (the features inside the evaluator, a detection inside the
watermark stage) is counted there only, so the stages and "other" (the generation's wall time
minus the named stages: pool bookkeeping, model construction, the progress bar, the spread
evaluator) add up to the generation:

    compose     loops.families.LoopFamily.compose
    filter      loops.stages.FilterStage (the detector's scan of the pool)
    fit         model.fit                           sample     model.sample
    features    GenerationMetrics.features (S_t; in g1 also the reference split) and building the
                extractor (g1: training the LeNet, or loading it from the cache)
    knn         eval.prdc.RealManifold (g1: the reference radii) and its score on S_t
    fid_kid     the rest of GenerationMetrics: feature statistics, Fréchet distance, KID
    watermark   loops.stages.WatermarkStage, the artifact evaluator, building the run's watermark
    checkpoint  loops.checkpoint.Checkpoints.save
    report      results.csv, status.json, report.md and its plots, the sample grid

Generation 1 runs from the start of the command (its column holds the one-off costs: LeNet,
reference features and radii, Hydra and the data); generation t ≥ 2 runs from the start of
generation t to the start of generation t+1 (its results.csv and report included); the final
rewrite after the loop is printed on its own line. The share of a stage is its seconds summed over
generations ≥ 2 ÷ their wall time (shares add to 1; with one generation, generation 1's). Prints,
per model: a markdown table (stage | seconds g1 | median s/gen g≥2 | share g≥2), a block of
``share_<stage>: <x>`` lines after ``model: <name>``, ``generation_s_g1`` and
``generation_s_median``, a line for every stage over 25 % that is not model fitting, and the load
average (``/proc/loadavg``) before and after: on a shared machine read the shares, not the seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.generation_speed import loadavg  # noqa: E402
from eval.prdc import RealManifold  # noqa: E402
from loops.checkpoint import Checkpoints  # noqa: E402
from loops.engine import LoopEngine  # noqa: E402
from loops.families import LoopFamily  # noqa: E402
from loops.stages import FilterStage, WatermarkStage  # noqa: E402
import madmark.commands.run as run_command  # noqa: E402
from madmark.cli import main as madmark_main  # noqa: E402
from madmark.metrics import GenerationMetrics  # noqa: E402
from madmark.rundir import RunDir  # noqa: E402
from madmark.watermarking import RunWatermark  # noqa: E402

STAGES = ("compose", "filter", "fit", "sample", "features", "knn", "fid_kid", "watermark",
          "checkpoint", "report", "other")
#: stages over this share of a generation get a line (model fitting is expected to dominate)
FLAG_SHARE = 0.25
SETUP, AFTER = 0, -1          # buckets: before generation 1 (merged into it), after the loop


@dataclass
class Profile:
    """Own seconds per stage and wall seconds of each generation of one run.

    ``seconds[t][stage]`` for t = 1..T (generation 1 includes the setup before it), ``wall[t]``;
    ``setup`` the seconds before generation 1 started, ``after`` the stage seconds after the loop.
    """
    seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    wall: dict[int, float] = field(default_factory=dict)
    setup: float = 0.0
    after: dict[str, float] = field(default_factory=dict)

    def stages(self, t: int) -> dict[str, float]:
        """Generation t's seconds per stage of :data:`STAGES`, "other" the rest of its wall."""
        s = {k: self.seconds.get(t, {}).get(k, 0.0) for k in STAGES[:-1]}
        s["other"] = max(self.wall[t] - sum(s.values()), 0.0)
        return s

    def later(self) -> list[int]:
        """The generations the shares and medians are taken over: ≥ 2, or [1] if that is all."""
        return sorted(t for t in self.wall if t >= 2) or [1]

    def shares(self) -> dict[str, float]:
        """Stage seconds summed over :meth:`later` ÷ their wall time; they add to 1."""
        gens = self.later()
        total = {k: sum(self.stages(t)[k] for t in gens) for k in STAGES}
        wall = sum(total.values())
        return {k: v / wall if wall > 0 else 0.0 for k, v in total.items()}

    def median(self, stage: str) -> float:
        return statistics.median(self.stages(t)[stage] for t in self.later())


class StageClock:
    """Accumulates the own perf_counter seconds of wrapped calls per (bucket, stage)."""

    def __init__(self):
        self.seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.bucket = SETUP
        self._inner: list[list[float]] = []     # per open timed call: seconds of timed calls inside

    def wrap(self, stage: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            inner, bucket = [0.0], self.bucket
            self._inner.append(inner)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self._inner.pop()
                self.seconds[bucket][stage] += dt - inner[0]
                if self._inner:
                    self._inner[-1][0] += dt
        return timed


@contextlib.contextmanager
def patched(replacements):
    """Set ``owner.name = make(owner.name)`` for each (owner, name, make), restored on exit (an
    attribute the owner only inherited is deleted again)."""
    saved = []
    try:
        for owner, name, make in replacements:
            saved.append((owner, name, name in vars(owner), vars(owner).get(name)))
            setattr(owner, name, make(getattr(owner, name)))
        yield
    finally:
        for owner, name, own, old in reversed(saved):
            if own:
                setattr(owner, name, old)
            else:
                delattr(owner, name)


def profile_run(overrides: list[str], out_dir: str) -> Profile:
    """Run ``madmark run <overrides> out_dir=<out_dir> progress=false`` in-process, timing its
    stages; raises RuntimeError if the run fails."""
    clock = StageClock()
    starts: dict[int, float] = {}
    loop_end = [0.0]

    def generation(fn):
        def timed_generation(engine, t, history):
            starts[t] = time.perf_counter()
            clock.bucket = t
            make = engine.make_model

            def make_timed():
                model = make()
                model.fit = clock.wrap("fit", model.fit)
                model.sample = clock.wrap("sample", model.sample)
                return model
            engine.make_model = make_timed
            try:
                return fn(engine, t, history)
            finally:
                engine.make_model = make
        return timed_generation

    def loop(fn):
        def timed_loop(engine):
            try:
                return fn(engine)
            finally:
                loop_end[0], clock.bucket = time.perf_counter(), AFTER
        return timed_loop

    def evaluator(fn):                      # RunWatermark.artifact_evaluator -> timed evaluate
        return lambda *a, **k: clock.wrap("watermark", fn(*a, **k))

    stage = lambda name: (lambda fn: clock.wrap(name, fn))  # noqa: E731
    replacements = [
        (LoopEngine, "generation", generation), (LoopEngine, "run", loop),
        (LoopFamily, "compose", stage("compose")), (FilterStage, "__call__", stage("filter")),
        (GenerationMetrics, "features", stage("features")),
        (run_command, "make_extractor", stage("features")),
        (RealManifold, "__init__", stage("knn")), (RealManifold, "score", stage("knn")),
        (GenerationMetrics, "__init__", stage("fid_kid")),
        (GenerationMetrics, "__call__", stage("fid_kid")),
        (WatermarkStage, "__call__", stage("watermark")),
        (RunWatermark, "artifact_evaluator", evaluator),
        (run_command, "build_run_watermark", stage("watermark")),
        (Checkpoints, "save", stage("checkpoint")),
        (RunDir, "write_results", stage("report")), (RunDir, "write_status", stage("report")),
        (RunDir, "save_grid", stage("report")), (run_command, "write_report", stage("report")),
    ]
    t0 = time.perf_counter()
    with patched(replacements):
        code = madmark_main(["run", *overrides, f"out_dir={out_dir}", "progress=false"])
    if code != 0:
        raise RuntimeError(f"madmark run {' '.join(overrides)} failed with exit code {code}")
    gens = sorted(starts)
    bounds = [t0] + [starts[t] for t in gens[1:]] + [loop_end[0]]
    profile = Profile(setup=starts[gens[0]] - t0, after=dict(clock.seconds[AFTER]))
    for i, t in enumerate(gens):
        profile.wall[t] = bounds[i + 1] - bounds[i]
        profile.seconds[t] = dict(clock.seconds[t])
    for k, v in clock.seconds[SETUP].items():
        profile.seconds[gens[0]][k] = profile.seconds[gens[0]].get(k, 0.0) + v
    return profile


def table(profile: Profile) -> str:
    """Markdown table: stage | seconds g1 | median s/gen g≥2 | share g≥2."""
    first, shares = profile.stages(1), profile.shares()
    lines = ["| stage | seconds g1 | median s/gen g≥2 | share g≥2 |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {first[k]:.2f} | {profile.median(k):.2f} | {100 * shares[k]:.1f} % |"
              for k in STAGES]
    wall = statistics.median(profile.wall[t] for t in profile.later())
    lines.append(f"| **generation** | {profile.wall[1]:.2f} | {wall:.2f} | 100 % |")
    return "\n".join(lines)


def report(name: str, profile: Profile) -> None:
    shares = profile.shares()
    print(table(profile))
    print(f"\nmodel: {name}")
    for k in STAGES:
        print(f"share_{k}: {shares[k]:.4f}")
    print(f"generation_s_g1: {profile.wall[1]:.2f}  (of it {profile.setup:.2f} s before "
          "generation 1 started)")
    print(f"generation_s_median: {statistics.median(profile.wall[t] for t in profile.later()):.2f}")
    print(f"after_loop_s: {sum(profile.after.values()):.2f}  (final results.csv, report.md)")
    for k in STAGES:
        if k != "fit" and shares[k] > FLAG_SHARE:
            print(f"over {100 * FLAG_SHARE:.0f} %: {k} takes {100 * shares[k]:.1f} % of a "
                  f"generation (g≥2, median {profile.median(k):.2f} s) and is not model fitting")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--model", default="pca_gmm", help="comma-separated configs/model names")
    ap.add_argument("--watermark", default=None,
                    help="a configs/watermark name, e.g. spread_spectrum (default: none)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (numpy/scipy/sklearn: set OMP_NUM_THREADS)")
    ap.add_argument("overrides", nargs="*", help="further madmark run overrides (key=value)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, cpus: {os.cpu_count()}")
    for name in [m for m in args.model.split(",") if m]:
        overrides = [f"model={name}", f"loop.generations={args.generations}", *args.overrides]
        if args.watermark:
            overrides.append(f"watermark={args.watermark}")
        print(f"\n## madmark run {' '.join(overrides)}\n\nloadavg_before: {loadavg()}")
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(sys.stderr):
            profile = profile_run(overrides, out)
        print(f"loadavg_after: {loadavg()}\n")
        report(name, profile)


if __name__ == "__main__":
    main()
