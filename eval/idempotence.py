"""Idempotence of a marking operation: what marking an already-marked image adds.

    row.update(idempotence(lambda x: wm.embed(x, msg), held_out_real))

A loop marks the samples of models trained on marked data; an embedder E that adds a full layer
to an image that already carries the mark stacks layers generation after generation. On real
images x (N, C, H, W) in [0, 1] (held out: never used to fit), with once = E(x), twice = E(once)
and r̄ = mean(once − x) the mean residual of one marking (C, H, W),

    idem_layers  = <mean(twice − once), r̄> / <r̄, r̄>     (watermark layers, the unit of
                                                          eval.artifacts' artifact_energy)
    idem_psnr_db = 10 log10(1 / mean((twice − once)²))    (pooled over every pixel; inf when equal)

An idempotent mark scores 0 and inf; an embedder that spends its full budget again scores about 1
layer and its own PSNR. The autophagy-aware scorecard asks for |idem_layers| <= 0.05 and
idem_psnr_db >= 50.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from madcore.columns import Column

_ON = "held-out real images (the reference split's first watermark.n_probe), marked twice"
#: the columns :func:`idempotence` returns
COLUMNS = (
    Column("idem_layers", "what marking an already-marked image adds along the mark: "
           "<mean(E(E(x)) − E(x)), r̄> / <r̄, r̄> with r̄ = mean(E(x) − x) (0 = idempotent, ~1 = "
           "a second full layer)", "watermark layers", _ON),
    Column("idem_psnr_db", "PSNR of E(E(x)) against E(x), pooled over all pixels (inf: a second "
           "marking changes nothing)", "dB", _ON),
)


def idempotence(embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                batch_size: int = 256) -> dict[str, float]:
    """``{"idem_layers", "idem_psnr_db"}`` of the marking operation ``embed`` on images x
    (N, C, H, W) in [0, 1] (module docstring), in batches of ``batch_size``."""
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"idempotence needs images (N, C, H, W) with N >= 1, got {tuple(x.shape)}")
    first = torch.zeros(x.shape[1:], dtype=torch.float64, device=x.device)
    second = torch.zeros_like(first)
    sq = 0.0
    for chunk in x.split(int(batch_size)):
        once = embed(chunk)
        twice = embed(once)
        first += (once - chunk).double().sum(0)
        second += (twice - once).double().sum(0)
        sq += float((twice - once).double().square().sum())
    n = x.shape[0]
    r, added = first / n, second / n
    norm = float((r * r).sum())
    layers = float((added * r).sum()) / norm if norm > 0 else math.nan
    mse = sq / x.numel()
    return {"idem_layers": layers, "idem_psnr_db": math.inf if mse == 0 else -10 * math.log10(mse)}
