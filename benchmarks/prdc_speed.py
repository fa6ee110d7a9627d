"""Speed and memory of ``eval.prdc`` against the reference ``prdc.compute_prdc`` (pip prdc).

Run (from the repository root; a few minutes on 2 CPU cores, most of it in the 50k part):

    python benchmarks/prdc_speed.py                 # both parts, on CPU
    python benchmarks/prdc_speed.py --skip-50k      # only the 10k comparison
    python benchmarks/prdc_speed.py --device cuda   # our side on a GPU (prdc stays on CPU)

Part 1 — N = M = 10,000 real and fake features, d = 64, k = 5, standard normal (numpy seed 0,
float64) in one process: both implementations on the same arrays, values checked equal to 1e-6,
best-of-repeats wall times, then ``ratio_vs_prdc_10k: <prdc time / our time>``.

Part 2 — N = M = 50,000, d = 2048 (float32 torch.randn, seed 0), only ``eval.prdc``, in a fresh
subprocess: ``peak_rss_gb_50k`` is its ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (features
included: 2 × 0.41 GB, plus the torch runtime), ``time_50k_s`` its wall time. Linux carries
ru_maxrss over from the parent across fork/exec, so this part runs FIRST, while the parent is
still small; the child's /proc VmHWM (reset by exec) is printed as a cross-check.
Also printed: the device and the torch thread count.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from eval.prdc import prdc  # noqa: E402

KEYS = ("precision", "recall", "density", "coverage")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    return f"cpu ({cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def best_time(fn, repeats: int, device: str = "cpu"):
    """(min wall seconds, last result) over ``repeats`` calls."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def part_10k(device: str, repeats_ref: int, repeats_ours: int) -> None:
    import prdc as prdc_pkg
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((10_000, 64)), rng.standard_normal((10_000, 64))

    def reference():
        with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
            return prdc_pkg.compute_prdc(real, fake, nearest_k=5)

    real_t, fake_t = torch.from_numpy(real).to(device), torch.from_numpy(fake).to(device)
    t_ours, ours = best_time(lambda: prdc(real_t, fake_t, 5), repeats_ours, device)
    t_ref, ref = best_time(reference, repeats_ref)
    diffs = {key: abs(ours[key] - float(ref[key])) for key in KEYS}
    print("prdc_10k:", {key: float(ref[key]) for key in KEYS})
    print("ours_10k:", ours)
    print(f"max_abs_diff_10k: {max(diffs.values()):.3g}")
    if max(diffs.values()) > 1e-6:
        raise SystemExit("values differ from prdc.compute_prdc by more than 1e-6")
    print(f"time_prdc_10k_s: {t_ref:.3f}")
    print(f"time_ours_10k_s: {t_ours:.3f}")
    print(f"ratio_vs_prdc_10k: {t_ref / t_ours:.2f}")


def child_50k(device: str) -> None:
    g = torch.Generator().manual_seed(0)
    real = torch.randn(50_000, 2048, generator=g).to(device)
    fake = torch.randn(50_000, 2048, generator=g).to(device)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    t0 = time.perf_counter()
    out = prdc(real, fake, 5)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    with open("/proc/self/status") as f:  # high-water mark of this process image (KiB)
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20
    print(json.dumps({"time": elapsed, "peak": peak, "hwm": hwm, "base": base, "values": out}))


def part_50k(device: str) -> None:
    cmd = [sys.executable, os.path.abspath(__file__), "--child-50k", "--device", device]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("ours_50k:", out["values"])
    print(f"parent_maxrss_gb_at_spawn: {parent:.2f}")
    print(f"rss_after_features_gb_50k: {out['base']:.2f}")
    print(f"vmhwm_gb_50k: {out['hwm']:.2f}")
    print(f"peak_rss_gb_50k: {out['peak']:.2f}")
    print(f"time_50k_s: {out['time']:.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-50k", action="store_true")
    ap.add_argument("--repeats-ref", type=int, default=3)
    ap.add_argument("--repeats-ours", type=int, default=5)
    ap.add_argument("--child-50k", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_50k:
        child_50k(args.device)
    else:
        print(f"device: {device_name(args.device)}")
        if not args.skip_50k:
            part_50k(args.device)  # first: ru_maxrss is inherited from the parent
        part_10k(args.device, args.repeats_ref, args.repeats_ours)
