"""Fit and sample seconds of one mnist5k generation per regenerator, against ``pca_gmm`` measured
in the same run.

Run (from the repository root; ~3 min on 2 CPU cores):

    python benchmarks/generation_speed.py                       # pca_gmm, vae, latent_diffusion
    python benchmarks/generation_speed.py --models pca_gmm,vae_tiny --repeats 3
    python benchmarks/generation_speed.py --threads 2 --device cuda

One generation as ``madmark run`` makes it: the 4,000-digit mnist5k train split (seed 0), a model
built from ``configs/model/<name>.yaml`` (its defaults), ``fit`` with the generation-1 fit stream
and ``sample(4000)`` with the sampling stream, λ = 1. Timed with ``time.perf_counter`` around
each call (CUDA synchronised); with ``--repeats k`` the models run in turn k times (so a change of
machine load hits all of them) and the median is printed. Ratios are model / pca_gmm (> 1 is
slower). The machine load (``/proc/loadavg``) is printed before and after: on a shared machine
read the ratios, not the seconds.

Prints ``fit_s_<model>``, ``sample_s_<model>``, ``ratio_fit_<model>_vs_pca_gmm``,
``ratio_sample_<model>_vs_pca_gmm``, the device, torch threads and load averages.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import configs  # noqa: F401,E402  (registers the schemas the model yamls start from)
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402

from madcore.rng import generator  # noqa: E402
from madmark.data import MNIST5k  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The regenerators compared by default (a model whose configs/model/<name>.yaml is missing is
#: reported as not available).
DEFAULT_MODELS = ("pca_gmm", "vae", "latent_diffusion")
BASELINE = "pca_gmm"
N_SAMPLES = 4000


def loadavg() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    return "n/a"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    return f"cpu ({cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def build(name: str):
    """The model of ``configs/model/<name>.yaml``, as ``madmark run model=<name>`` builds it."""
    with initialize_config_dir(config_dir=os.path.join(ROOT, "configs"), version_base=None):
        cfg = compose("config", overrides=[f"model={name}"])
    return instantiate(cfg.model)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_generation(name: str, x: torch.Tensor, labels: torch.Tensor,
                   device: torch.device) -> tuple[float, float]:
    """(fit seconds, sample seconds) of one generation of model ``name`` on x."""
    model = build(name)
    sync(device)
    t0 = time.perf_counter()
    model.fit(x, generator(0, 1, "fit", device), labels=labels)
    sync(device)
    t1 = time.perf_counter()
    kw = {}
    if model.conditional:
        kw["labels"] = torch.randint(model.num_classes, (N_SAMPLES,), device=device,
                                     generator=generator(0, 1, "labels", device))
    model.sample(N_SAMPLES, 1.0, generator(0, 1, "sample", device), **kw)
    sync(device)
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated configs/model names (pca_gmm is always included)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [BASELINE] + [m for m in args.models.split(",") if m and m != BASELINE]
    present = [m for m in names
               if os.path.isfile(os.path.join(ROOT, "configs", "model", f"{m}.yaml"))]
    splits = MNIST5k(seed=0, n_reference=1000).load()
    x = splits.train.to(device)
    labels = splits.train_labels.to(device) if splits.train_labels is not None else None
    print(f"device: {device_name(device)}")
    print(f"data: mnist5k train split {tuple(x.shape)}, {N_SAMPLES} samples, λ = 1")
    print(f"loadavg_before: {loadavg()}")
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in present}
    for _ in range(args.repeats):
        for m in present:
            times[m].append(one_generation(m, x, labels, device))
    print(f"loadavg_after: {loadavg()}")
    fit = {m: statistics.median(t[0] for t in v) for m, v in times.items()}
    sample = {m: statistics.median(t[1] for t in v) for m, v in times.items()}
    for m in names:
        if m not in present:
            print(f"fit_s_{m}: not available (no configs/model/{m}.yaml yet)")
            continue
        print(f"fit_s_{m}: {fit[m]:.2f}")
        print(f"sample_s_{m}: {sample[m]:.3f}")
        if m != BASELINE:
            print(f"ratio_fit_{m}_vs_{BASELINE}: {fit[m] / fit[BASELINE]:.1f}")
            print(f"ratio_sample_{m}_vs_{BASELINE}: {sample[m] / sample[BASELINE]:.1f}")


if __name__ == "__main__":
    main()
