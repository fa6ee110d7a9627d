"""Embed + detect throughput of madmark's watermarks against invisible-watermark's DwtDct.

Run from the repository root (needs `pip install 'madmark[baselines]'`):

    python benchmarks/watermark_speed.py [--n 64] [--device cpu|cuda] [--batch 64] [--dwtdct-n N]
    python benchmarks/watermark_speed.py --device cuda --n 2048 --batch 256 --dwtdct-n 256   # GPU

Both methods mark and then decode the same N real 256x256 RGB photo crops (scikit-image) in one
process, 32 bits. Prints images/s for each and
``ratio_vs_dwtdct: <spread spectrum embed+detect images/s / DwtDct embed+detect images/s>``, the
same for the learned RGB watermarker (the shipped ``rgb48`` card when present: 64x64 working
resolution, 48 bits; else an untrained model of width 32, speed does not depend on training), and
``ratio_aware_vs_spread_spectrum``: the idempotent variant (watermark/aware.py) against the
budgeted informed embedding.
Best of 3 repeats.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from madmark.data import Photos
from watermark import (DwtDct, IdempotentSpreadSpectrum, LearnedWatermarker, SecretKey,
                       SpreadSpectrum, load)
from watermark.cards import CARDS_DIR


def throughput(method, images: torch.Tensor, batch: int, repeats: int = 3) -> float:
    """Images per second of embed followed by decode, best of ``repeats``."""
    msg = torch.randint(0, 2, (len(images), method.num_bits), generator=torch.Generator().manual_seed(0))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            x_w = method.embed(images[i:i + batch], msg[i:i + batch].float())
            method.decode(x_w)
        if images.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dwtdct-n", type=int, default=None,
                    help="images for DwtDct (default --n): it runs one image at a time on the CPU, so its "
                         "rate does not depend on N, and a GPU run's N would take minutes")
    args = ap.parse_args()
    images = Photos(seed=0, size=256, n_train=8, n_reference=args.n, reference_fraction=0.5,
                    images=["astronaut", "coffee", "rocket", "immunohistochemistry", "retina",
                            "hubble_deep_field"]).load().reference
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    dwt_images = images[:args.dwtdct_n or len(images)]
    print(f"device: {device} ({name}), torch threads {torch.get_num_threads()}, N = {len(images)}, "
          f"batch {args.batch}, DwtDct on the CPU with N = {len(dwt_images)}")
    dwt = throughput(DwtDct(num_bits=32), dwt_images, args.batch)
    ss = throughput(SpreadSpectrum(SecretKey("bench"), num_bits=32), images.to(device), args.batch)
    aware = throughput(IdempotentSpreadSpectrum(SecretKey("bench"), num_bits=32), images.to(device),
                       args.batch)
    if (CARDS_DIR / "rgb48.yaml").is_file():            # the shipped RGB card
        learned, what = load("rgb48").to(device), "rgb48 card"
    else:                                                # its architecture, untrained
        learned, what = LearnedWatermarker(48, 64, 0.02, 3, 32, device=str(device)), "untrained"
    lw = throughput(learned, images.to(device), args.batch)
    print(f"learned: {what}, width {learned.hparams()['width']}")
    print(f"dwtdct_images_per_s: {dwt:.1f}")
    print(f"spread_spectrum_images_per_s: {ss:.1f}")
    print(f"spread_spectrum_aware_images_per_s: {aware:.1f}")
    print(f"learned_rgb48_images_per_s: {lw:.1f}")
    print(f"ratio_vs_dwtdct: {ss / dwt:.2f}")
    print(f"ratio_learned_vs_dwtdct: {lw / dwt:.2f}")
    print(f"ratio_aware_vs_spread_spectrum: {aware / ss:.2f}")


if __name__ == "__main__":
    main()
