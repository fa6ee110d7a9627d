"""Speed and memory of ``eval.prdc`` against the reference ``prdc.compute_prdc`` (pip prdc).

Run (from the repository root; about 5 minutes on 2 CPU cores with --skip-50k):

    python benchmarks/prdc_speed.py                 # both parts, on CPU
    python benchmarks/prdc_speed.py --skip-50k      # only the 10k comparison
    python benchmarks/prdc_speed.py --device cuda   # our side on a GPU (prdc stays on CPU)
    python benchmarks/prdc_speed.py --skip-50k --skip-cold --skip-loaded  # only part 1

Part 1 — N = M = 10,000 real and fake features, d = 64, k = 5, standard normal (numpy seed 0,
float64) in one process: both implementations on the same arrays, values checked equal to 1e-6,
best-of-repeats wall times, then ``ratio_vs_prdc_10k: <prdc time / our time>``.

Part 2 — N = M = 50,000, d = 2048 (float32 torch.randn, seed 0), only ``eval.prdc``, in a fresh
subprocess: ``peak_rss_gb_50k`` is its ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (features
included: 2 × 0.41 GB, plus the torch runtime), ``time_50k_s`` its wall time. Linux carries
ru_maxrss over from the parent across fork/exec, so this part runs FIRST, while the parent is
still small; the child's /proc VmHWM (reset by exec) is printed as a cross-check.
Also printed: the device and the torch thread count.

Part 3 — cold calls: the same seeded 10k×64 float64 data, ``--calls`` (5) calls per side, each in
a NEW process (imports, builds the data, times ONE call, sides alternating), medians
``time_prdc_10k_cold_s`` / ``time_ours_10k_cold_s``, ``ratio_vs_prdc_10k_cold: <prdc median /
our median>``; every call's values are checked against prdc's (``max_abs_diff_10k_cold``).

Part 4 — under load: the benchmark starts ONE concurrent CPU-bound process (numpy float64
matmuls on 2 BLAS threads, exits by itself after ``--load-seconds``, killed in a ``finally``),
waits 2 s, then runs ``--calls`` calls of prdc and of ours at 1 and at 2 torch threads in this
process, and stops it. Printed: the medians, ``ratio_vs_prdc_10k_loaded_threads1`` /
``_threads2``, ``ratio_vs_prdc_10k_loaded: <x>`` at ``--threads``, ``max_abs_diff_10k_loaded``,
and the load average before and after.

Threads: ``--threads`` (default: madmark's budget rule, :func:`madmark.threads.budget_for` with
``threads=null`` — the CPUs this process may use, capped by an inherited ``OMP_NUM_THREADS``) is
applied to torch for parts 1, 3 and 4's headline ratio; a library call uses the caller's torch
setting, as here. prdc runs as a user calls it (its sklearn ``pairwise_distances(n_jobs=8)``
and numpy's BLAS at their defaults).

Oversubscription: torch's OpenMP (libgomp) threads spin-wait between parallel regions by default;
with other CPU-bound work on the cores that spinning is what made 2 threads 3-5x slower than 1.
``OMP_WAIT_POLICY=PASSIVE`` in the environment (read when libgomp loads, i.e. before ``import
torch``; run ``OMP_WAIT_POLICY=PASSIVE python benchmarks/prdc_speed.py ...``) removes it. The
``madmark`` command sets it by default (madmark/__init__.py); this script measures the library
as imported, so it keeps the environment's setting.
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


def data_10k():
    """The seeded 10k×64 float64 real and fake features of parts 1, 3 and 4."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((10_000, 64)), rng.standard_normal((10_000, 64))


def reference_call(real, fake):
    import prdc as prdc_pkg
    with contextlib.redirect_stdout(io.StringIO()):  # compute_prdc prints the set sizes
        return prdc_pkg.compute_prdc(real, fake, nearest_k=5)


def max_diff(ours: dict, ref: dict) -> float:
    return max(abs(ours[key] - float(ref[key])) for key in KEYS)


def check_diff(diff: float, what: str) -> None:
    if diff > 1e-6:
        raise SystemExit(f"{what}: values differ from prdc.compute_prdc by {diff:.3g} > 1e-6")


def loadavg() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    return "n/a"


def part_10k(device: str, repeats_ref: int, repeats_ours: int) -> None:
    real, fake = data_10k()

    def reference():
        return reference_call(real, fake)

    real_t, fake_t = torch.from_numpy(real).to(device), torch.from_numpy(fake).to(device)
    t_ours, ours = best_time(lambda: prdc(real_t, fake_t, 5), repeats_ours, device)
    t_ref, ref = best_time(reference, repeats_ref)
    diff = max_diff(ours, ref)
    print("prdc_10k:", {key: float(ref[key]) for key in KEYS})
    print("ours_10k:", ours)
    print(f"max_abs_diff_10k: {diff:.3g}")
    check_diff(diff, "10k")
    print(f"time_prdc_10k_s: {t_ref:.3f}")
    print(f"time_ours_10k_s: {t_ours:.3f}")
    print(f"ratio_vs_prdc_10k: {t_ref / t_ours:.2f}")


def child_call(side: str, device: str) -> None:
    """Part 3's child: build the data, time ONE call of ``side`` (prdc | ours), print JSON."""
    real, fake = data_10k()
    if side == "prdc":
        t0 = time.perf_counter()
        out = {key: float(v) for key, v in reference_call(real, fake).items()}
    else:
        real_t, fake_t = torch.from_numpy(real).to(device), torch.from_numpy(fake).to(device)
        t0 = time.perf_counter()
        out = prdc(real_t, fake_t, 5)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    print(json.dumps({"time": time.perf_counter() - t0, "values": out}))


def part_cold(device: str, threads: int, calls: int) -> None:
    times: dict[str, list[float]] = {"prdc": [], "ours": []}
    values: dict[str, list[dict]] = {"prdc": [], "ours": []}
    for _ in range(calls):
        for side in ("prdc", "ours"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child-call", side,
                   "--device", device, "--threads", str(threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600)
            out = json.loads(res.stdout.strip().splitlines()[-1])
            times[side].append(out["time"])
            values[side].append(out["values"])
    diff = max(max_diff(o, r) for o in values["ours"] for r in values["prdc"])
    t_ref, t_ours = float(np.median(times["prdc"])), float(np.median(times["ours"]))
    print("times_prdc_10k_cold_s:", [round(t, 3) for t in times["prdc"]])
    print("times_ours_10k_cold_s:", [round(t, 3) for t in times["ours"]])
    print(f"max_abs_diff_10k_cold: {diff:.3g}")
    check_diff(diff, "10k cold")
    print(f"time_prdc_10k_cold_s: {t_ref:.3f}")
    print(f"time_ours_10k_cold_s: {t_ours:.3f}")
    print(f"ratio_vs_prdc_10k_cold: {t_ref / t_ours:.2f}")


LOAD_SCRIPT = """
import sys, time
import numpy as np
stop = time.monotonic() + float(sys.argv[1])
a = np.random.default_rng(1).standard_normal((1024, 1024))
while time.monotonic() < stop:
    a = np.tanh(a @ a)
"""


def start_load(seconds: float) -> subprocess.Popen:
    """A CPU-bound process on 2 BLAS threads that ends by itself after ``seconds``."""
    env = dict(os.environ, **{v: "2" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                               "MKL_NUM_THREADS")})
    return subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT, str(seconds)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def median_time(fn, calls: int, device: str = "cpu"):
    times, outs = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        outs.append(fn())
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times, outs


def part_loaded(device: str, threads: int, calls: int, load_seconds: float) -> None:
    real, fake = data_10k()
    real_t, fake_t = torch.from_numpy(real).to(device), torch.from_numpy(fake).to(device)
    before = torch.get_num_threads()
    print(f"loadavg_before_load: {loadavg()}")
    load = start_load(load_seconds)
    try:
        time.sleep(2.0)  # let the load process import numpy and start spinning
        t_ref, ts_ref, refs = median_time(lambda: reference_call(real, fake), calls)
        ours: dict[int, tuple] = {}
        for n in sorted({1, 2, threads}):
            torch.set_num_threads(n)
            ours[n] = median_time(lambda: prdc(real_t, fake_t, 5), calls, device)
        alive = load.poll() is None
        print(f"loadavg_under_load: {loadavg()}")
    finally:
        torch.set_num_threads(before)
        load.kill()
        load.wait()
    if not alive:
        print("warning: the load process ended before the measurements did (raise --load-seconds)")
    diff = max(max_diff(o, r) for n in ours for o in ours[n][2] for r in refs)
    print("times_prdc_10k_loaded_s:", [round(t, 3) for t in ts_ref])
    for n in ours:
        print(f"times_ours_10k_loaded_threads{n}_s:", [round(t, 3) for t in ours[n][1]])
    print(f"max_abs_diff_10k_loaded: {diff:.3g}")
    check_diff(diff, "10k loaded")
    print(f"time_prdc_10k_loaded_s: {t_ref:.3f}")
    for n in ours:
        print(f"time_ours_10k_loaded_threads{n}_s: {ours[n][0]:.3f}")
        print(f"ratio_vs_prdc_10k_loaded_threads{n}: {t_ref / ours[n][0]:.2f}")
    print(f"ratio_vs_prdc_10k_loaded: {t_ref / ours[threads][0]:.2f}   (threads {threads})")


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
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of our side (default: madmark's thread budget rule)")
    ap.add_argument("--calls", type=int, default=5, help="calls per side, cold and loaded")
    ap.add_argument("--load-seconds", type=float, default=400.0,
                    help="hard time bound of the concurrent load process")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--skip-loaded", action="store_true")
    ap.add_argument("--child-50k", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-call", choices=("prdc", "ours"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads is None:
        from madmark.threads import budget_for
        args.threads = budget_for(None).threads
    torch.set_num_threads(args.threads)
    if args.child_50k:
        child_50k(args.device)
    elif args.child_call:
        child_call(args.child_call, args.device)
    else:
        print(f"device: {device_name(args.device)}")
        print(f"loadavg_start: {loadavg()}")
        if not args.skip_50k:
            part_50k(args.device)  # first: ru_maxrss is inherited from the parent
        part_10k(args.device, args.repeats_ref, args.repeats_ours)
        if not args.skip_cold:
            part_cold(args.device, args.threads, args.calls)
        if not args.skip_loaded:
            part_loaded(args.device, args.threads, args.calls, args.load_seconds)
        print(f"loadavg_end: {loadavg()}")
