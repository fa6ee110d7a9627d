"""Seconds per fit step and sampling tokens/s of ``model=gpt`` and ``model=gpt_tiny``, with and
without the KV cache, on random token sequences.

Run (from the repository root; ~2 min on 2 CPU cores):

    python benchmarks/gpt_speed.py                                  # gpt, gpt_tiny; L 64, V 2048
    python benchmarks/gpt_speed.py --models gpt_tiny --n 256,1000 --device cuda

Data: N = 2,000 sequences of ``--length`` L ids uniform in [1, V). A model built from
``configs/model/<name>.yaml`` fits ``--steps`` steps (its batch size, after 3 untimed warm-up
steps: the first optimiser step pays one-off imports); then ``sample(n)`` at λ = 1 with the cache
(``kv_cache=true``, the default) and without (the plain TextLM sampler recomputing the whole
context each step), tokens/s = n · L / seconds, each the median of ``--repeats``. Timed with
``time.perf_counter`` (CUDA synchronised). The load average (``/proc/loadavg``) is printed before
and after: on a shared machine the seconds are noisy, the cache's ratio less so.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import configs  # noqa: F401,E402  (registers the schemas the model yamls start from)
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def build(name: str, **over):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose("config", overrides=[f"model={name}"])
    return instantiate({**cfg.model, **over})


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="gpt,gpt_tiny")
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n", default="256")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, load before {loadavg()}")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(1, args.vocab, (2000, args.length), generator=g, device=device)
    for name in args.models.split(","):
        m = build(name, vocab_size=args.vocab, steps=3)
        m.fit(x, torch.Generator(device=device).manual_seed(1))          # warm-up
        m.steps = args.steps
        fit_s = timed(lambda: m.fit(x, torch.Generator(device=device).manual_seed(1)), device)
        print(f"{name}: {sum(p.numel() for p in m.net.parameters()) / 1e6:.2f}M parameters, "
              f"batch {m.batch_size} x L {args.length}: fit {1e3 * fit_s / args.steps:.1f} "
              f"ms/step ({args.steps} steps)")
        for n in (int(v) for v in args.n.split(",")):
            rates = {}
            for cache in (True, False):
                m.kv_cache = cache
                secs = [timed(lambda: m.sample(n, 1.0, torch.Generator(device=device)
                                               .manual_seed(2)), device)
                        for _ in range(args.repeats)]
                rates[cache] = n * args.length / statistics.median(secs)
            print(f"  sample n={n}: {rates[True]:.0f} tokens/s with the KV cache, "
                  f"{rates[False]:.0f} without (x{rates[True] / rates[False]:.1f})")
    print(f"load after {loadavg()}")


if __name__ == "__main__":
    main()
