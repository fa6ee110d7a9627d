"""What ``eval.cas=true`` adds to a default-size generation: seconds of generations with and without
the classification accuracy score, measured in the same process.

Run (from the repository root; about 2 min on 2 shared CPU cores):

    python benchmarks/cas_speed.py                          # the default run: mnist5k, pca_gmm
    python benchmarks/cas_speed.py --generations 5 eval.cas_epochs=3 eval.cas_augmented=false

Two loop engines are built from the composed default config (plus any overrides) as ``madmark
run`` builds them — the spread evaluator, the per-generation metrics (LeNet features, precision /
recall / density / coverage, FID, KID) and, in the second only, the CAS evaluator
(madmark.cas.build_cas) — and generations 1..G of both run in turn, the order alternating (A1,
B1, B2, A2, A3, B3, ...), so a change of machine load hits both. Each generation is timed with ``time.perf_counter`` around
``LoopEngine.generation`` (compose, fit, sample, evaluate, checkpoint to a temporary folder).
``cas_real`` is computed once, in generation 1 of the CAS run, and cached: the first ratio
includes it, the steady-state ratio (generations 2..G) does not. The machine load is printed
before and after: on a shared machine read the ratios, not the seconds.

Prints ``s_generation_without_cas``, ``s_generation_with_cas`` (totals over G generations),
``ratio_generation_with_cas`` (with ÷ without, all generations), ``ratio_steady_state`` (2..G),
``s_cas_evaluator`` (the CAS evaluator's own seconds, timed inside the generations with CAS) and
``ratio_attributed`` = 1 + s_cas_evaluator ÷ s_generation_without_cas (less noisy under a
changing load than the direct ratio), the per-generation seconds, the CAS settings and the load
averages.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import configs  # noqa: F401,E402  (registers the schemas the yamls start from)
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from loops.checkpoint import Checkpoints  # noqa: E402
from loops.engine import LoopEngine  # noqa: E402
from loops.families import LoopFamily  # noqa: E402
from madmark.cas import build_cas, check_cas_data  # noqa: E402
from madmark.commands.run import loop_settings  # noqa: E402
from madmark.evaluation import spread_evaluator  # noqa: E402
from madmark.metrics import GenerationMetrics, make_extractor  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loadavg() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of madmark run's config")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base=None):
        cfg = compose("config", overrides=["data_name=mnist5k", *args.overrides])
    device = torch.device("cpu")
    source = instantiate(cfg.data)
    splits = source.load()
    check_cas_data(splits, cfg.data_name)
    settings = loop_settings(cfg, len(splits.train))
    settings.generations = args.generations
    extractor = make_extractor(cfg.eval, splits, cfg.data_name, device)
    metrics = GenerationMetrics(cfg.eval, extractor, splits.reference, int(cfg.seed), device)
    cas = build_cas(cfg.eval, splits, cfg.data_name, device, int(cfg.seed), metrics)
    make_model = instantiate(cfg.model, _partial_=True)
    seconds: dict[str, list[float]] = {"without": [], "with": [], "cas": []}

    def timed_cas(t, samples, model, labels=None):
        t0 = time.perf_counter()
        out = cas(t, samples, model, labels=labels)
        seconds["cas"].append(time.perf_counter() - t0)
        return out

    with tempfile.TemporaryDirectory(prefix="cas_speed_") as tmp:
        engines = {name: LoopEngine(source=source, make_model=make_model,
                                    family=LoopFamily(cfg.loop.family, cfg.loop.history),
                                    settings=settings, checkpoints=Checkpoints(Path(tmp) / name),
                                    device=device,
                                    evaluators=[spread_evaluator(splits.reference), metrics,
                                                *([timed_cas] if name == "with" else [])])
                   for name in ("without", "with")}
        history: dict[str, list] = {name: [] for name in engines}
        rows: dict[str, dict] = {}
        print(f"loadavg_before: {loadavg()}")
        for t in range(1, args.generations + 1):
            for name in ("without", "with") if t % 2 else ("with", "without"):
                engine = engines[name]
                t0 = time.perf_counter()
                _, produced, rows[name] = engine.generation(t, history[name])
                seconds[name].append(time.perf_counter() - t0)
                history[name].append(produced.subset(engine._pooled(len(produced))))
            row = rows["with"]
            print(f"generation {t}: without {seconds['without'][-1]:.2f} s, with "
                  f"{seconds['with'][-1]:.2f} s, of which CAS {seconds['cas'][-1]:.2f} s "
                  f"(cas={row['cas']:.3f}, cas_real={row['cas_real']:.3f})", flush=True)
        print(f"loadavg_after: {loadavg()}")
    e = cfg.eval
    print(f"cas settings: n_train={row['cas_n_train']} n_test={row['cas_n_test']} "
          f"epochs={e.cas_epochs} batch_size={e.cas_batch_size} channels={list(e.cas_channels)} "
          f"augmented={e.cas_augmented}; {settings.n_synthetic} samples per generation")
    without, with_cas = sum(seconds["without"]), sum(seconds["with"])
    print(f"s_generation_without_cas: {without:.2f}")
    print(f"s_generation_with_cas: {with_cas:.2f}")
    print(f"ratio_generation_with_cas: {with_cas / without:.3f}")
    if args.generations > 1:
        steady = sum(seconds["with"][1:]) / sum(seconds["without"][1:])
        print(f"ratio_steady_state: {steady:.3f}")
    print(f"s_cas_evaluator: {sum(seconds['cas']):.2f}")
    print(f"ratio_attributed: {1 + sum(seconds['cas']) / without:.3f}")


if __name__ == "__main__":
    main()
