"""Embed + detect throughput of madmark's watermarks against invisible-watermark's DwtDct.

Run from the repository root (needs `pip install 'madmark[baselines]'`):

    python benchmarks/watermark_speed.py [--n 64] [--device cpu|cuda] [--batch 64] [--dwtdct-n N]
                                         [--threads T] [--repeats 5] [--chunk C]
    OMP_WAIT_POLICY=PASSIVE python benchmarks/watermark_speed.py      # a shared machine (below)
    python benchmarks/watermark_speed.py --device cuda --n 2048 --batch 256 --dwtdct-n 256   # GPU

All methods mark and then decode the same N real 256x256 RGB photo crops (scikit-image) in one
process, 32 bits (48 for the learned card). Timing: ``--repeats`` rounds, each timing every method
once in turn (interleaved, so a change in the machine's load hits all of them), embed + decode of
the N images in batches of ``--batch``, after one untimed warm-up round; a method's images/s is
N over its median round, a ratio the median of the per-round ratios. Prints images/s for each,
``ratio_learned_vs_dwtdct_256`` (the learned RGB watermarker: the shipped ``rgb48`` card when
present, 64x64 working resolution, 48 bits; else an untrained model of its architecture, speed does
not depend on training; ``ratio_learned_vs_dwtdct`` is the same number under its older name),
``ratio_vs_dwtdct`` (spread spectrum), ``ratio_aware_vs_spread_spectrum`` (the idempotent variant,
watermark/aware.py, against the budgeted informed embedding), the torch thread count, the
``OMP_WAIT_POLICY`` and the load average; and the learned method's FLOPs per image (convolutions
and matmuls) with the GFLOP/s it achieved, and, when the ratio is below 3, how many images/s 3x
would take.

On a machine shared with other jobs OpenMP's spin-waiting between parallel regions makes two torch
threads slower than one (docs/performance.md); ``OMP_WAIT_POLICY=PASSIVE`` must be in the
environment before torch is imported, hence on the command line.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from madmark.data import Photos
from watermark import (DwtDct, IdempotentSpreadSpectrum, LearnedWatermarker, SecretKey,
                       SpreadSpectrum, load)
from watermark.cards import CARDS_DIR


def one_round(method, images: torch.Tensor, batch: int) -> float:
    """Seconds of embed followed by decode of `images` in batches of `batch`."""
    msg = torch.randint(0, 2, (len(images), method.num_bits), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        x_w = method.embed(images[i:i + batch], msg[i:i + batch].float())
        method.decode(x_w)
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def learned_flops(method: LearnedWatermarker, image: torch.Tensor) -> float:
    """FLOPs of one image's embed + decode: what torch's FLOP counter sees (convolutions, linear
    layers) plus the embedder's folded message matmuls (in-place addmm_, which it does not count)."""
    msg = torch.zeros(1, method.num_bits, device=image.device)
    method.embed(image, msg)                                   # builds the folded message terms
    with FlopCounterMode(display=False) as counter:
        method.decode(method.embed(image, msg))
    folded = sum(2 * p.shape[0] * p.shape[1] for _, p in getattr(method.embedder, "_fold", ()))
    return counter.get_total_flops() + folded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=None,
                    help="images per pass of the learned method's pixel work (default: LearnedWatermarker.chunk)")
    ap.add_argument("--net-chunk", type=int, default=None,
                    help="images per pass of its networks (default: LearnedWatermarker.net_chunk)")
    ap.add_argument("--dwtdct-n", type=int, default=None,
                    help="images for DwtDct (default --n): it runs one image at a time on the CPU, so its "
                         "rate does not depend on N, and a GPU run's N would take minutes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = Photos(seed=0, size=256, n_train=8, n_reference=args.n, reference_fraction=0.5,
                    images=["astronaut", "coffee", "rocket", "immunohistochemistry", "retina",
                            "hubble_deep_field"]).load().reference
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    dwt_images = images[:args.dwtdct_n or len(images)]
    if (CARDS_DIR / "rgb48.yaml").is_file():            # the shipped RGB card
        learned, what = load("rgb48").to(device), "rgb48 card"
    else:                                                # its architecture, untrained
        learned, what = LearnedWatermarker(48, 64, 0.02, 3, 16, device=str(device)), "untrained"
    if args.chunk:
        learned.chunk = args.chunk
    if args.net_chunk:
        learned.net_chunk = args.net_chunk
    methods = {"dwtdct": (DwtDct(num_bits=32), dwt_images),
               "spread_spectrum": (SpreadSpectrum(SecretKey("bench"), num_bits=32), images.to(device)),
               "spread_spectrum_aware": (IdempotentSpreadSpectrum(SecretKey("bench"), num_bits=32),
                                         images.to(device)),
               "learned_rgb48": (learned, images.to(device))}
    load_before = os.getloadavg()[0]
    print(f"device: {device} ({name}), torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, N = {len(images)}, batch {args.batch}, "
          f"DwtDct on the CPU with N = {len(dwt_images)}")
    seconds = {k: [] for k in methods}
    for r in range(args.repeats + 1):                   # round 0: warm-up, not counted
        for k, (method, x) in methods.items():
            t = one_round(method, x, args.batch)
            if r:
                seconds[k].append(t / len(x))            # seconds per image
    rate = {k: 1 / statistics.median(v) for k, v in seconds.items()}

    def ratio(a: str, b: str) -> float:                 # a's speed over b's: median of the rounds' ratios
        return statistics.median(sb / sa for sa, sb in zip(seconds[a], seconds[b]))

    print(f"timing: {args.repeats} interleaved rounds after a warm-up round, medians; load average "
          f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"learned: {what}, width {learned.hparams()['width']}, images per pass {learned.chunk} (pixels), {learned.net_chunk or 'all'} (networks)")
    for k in methods:
        print(f"{k}_images_per_s: {rate[k]:.1f}")
    r_learned = ratio("learned_rgb48", "dwtdct")
    print(f"ratio_learned_vs_dwtdct_256: {r_learned:.2f}   (per round: "
          f"{', '.join(f'{sb / sa:.2f}' for sa, sb in zip(seconds['learned_rgb48'], seconds['dwtdct']))})")
    print(f"ratio_learned_vs_dwtdct: {r_learned:.2f}")
    print(f"ratio_vs_dwtdct: {ratio('spread_spectrum', 'dwtdct'):.2f}")
    print(f"ratio_aware_vs_spread_spectrum: {ratio('spread_spectrum_aware', 'spread_spectrum'):.2f}")
    flops = learned_flops(learned, images[:1].to(device))
    print(f"learned_gflop_per_image: {flops / 1e9:.3f} (embed + decode), achieved "
          f"{flops * rate['learned_rgb48'] / 1e9:.1f} GFLOP/s over the whole embed + decode")
    if r_learned < 3:
        print(f"3x DwtDct needs {3 * rate['dwtdct']:.1f} images/s ({3 * rate['dwtdct'] * flops / 1e9:.1f} GFLOP/s "
              f"at this FLOP count): short by {3 / r_learned:.2f}x")


if __name__ == "__main__":
    main()
