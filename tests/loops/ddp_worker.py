"""Worker that tests/loops/test_distributed.py launches under torchrun: 2 gloo processes on the CPU.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/loops/ddp_worker.py OUT

Each rank runs the collectives of ``madcore.dist`` and DDP training steps, then writes
``OUT/rank<r>.pt``. The test recomputes the same steps in one process, without DDP, and compares.
Sharing rule of every DDP step here: every rank draws the *global* batch identically, takes
``dist.shard(N)`` of it, and scales its mean loss by ``n_local * world_size / N`` so that DDP's
gradient average equals the gradient of the global batch's mean loss (shards may differ by one).

The watermark steps are the real ``watermark.train.watermark_train_step`` (which shards itself),
with the attack layer on: its per-image noise is drawn for the global batch and sliced.

DDP's part of a step is the gradient; the optimiser then runs on identical gradients on every rank.
The DDP runs use SGD: Adam divides each gradient element by its own magnitude, so where a true
gradient is ~0 it turns float rounding (which differs between a 2-rank and a 1-rank sum) into steps
of up to lr (measured: 5e-5 apart after 2 steps at lr 1e-3). That train_watermarker (Adam) takes
exactly the plain single-process step is checked in one process by the test.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from madcore import dist

# the tiny conv net (a): CONV_STEPS SGD steps on fresh global batches of CONV_N images (split 4 / 3)
CONV_N, CONV_STEPS, CONV_LR = 7, 3, 0.2
# the learned watermarker (b): watermark/train.py's step with attacks on; lr is train.py's Adam,
# sgd_lr the SGD of the DDP comparison (see the module docstring). width 16: with width 8 every
# GroupNorm group holds one channel, so the conv biases before it have a zero gradient (dead
# parameters). Global batches of 7 split 4 / 3; noise strong enough that wrong rows would show.
WM = dict(num_bits=8, work_size=16, alpha=0.05, width=16, msg_dim=8, steps=4, batch_size=7,
          lr=1e-3, sgd_lr=0.5, seed=3, quality_weight=0.1, idempotence_weight=2.0)
WM_ATTACKS = {"noise": (0.05, 0.1), "jpeg": (50.0, 90.0), "blur": (0.5, 1.5)}
WM_IMAGES = 32


def make_convnet(seed: int = 0) -> nn.Module:
    """(N, 3, 8, 8) -> (N, 5) logits; GroupNorm, not BatchNorm (no batch statistics to sync)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def conv_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: (CONV_N, 3, 8, 8) images and (CONV_N,) labels in [0, 5)."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.rand(CONV_N, 3, 8, 8, generator=g), torch.randint(0, 5, (CONV_N,), generator=g)


def wm_images() -> torch.Tensor:
    """(WM_IMAGES, 1, 16, 16) training images in [0, 1]."""
    return torch.rand(WM_IMAGES, 1, 16, 16, generator=torch.Generator().manual_seed(11))


def local_part(*tensors: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    """(loss scale, this rank's shards) for global-batch tensors of N rows."""
    n = tensors[0].shape[0]
    rows = dist.shard(n)
    return (rows.stop - rows.start) * dist.world_size() / n, [t[rows] for t in tensors]


def conv_steps() -> dict[str, torch.Tensor]:
    """The conv net after CONV_STEPS SGD steps (momentum 0.9) under the sharing rule."""
    model = dist.wrap(make_convnet())
    opt = torch.optim.SGD(model.parameters(), lr=CONV_LR, momentum=0.9)
    for step in range(CONV_STEPS):
        scale, (x, y) = local_part(*conv_batch(step))
        loss = scale * F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in dist.unwrap(model).state_dict().items()}


def make_wm():
    """The LearnedWatermarker train_watermarker starts from (same seed, same architecture)."""
    from watermark.learned import LearnedWatermarker

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WM["seed"])
        return LearnedWatermarker(WM["num_bits"], WM["work_size"], WM["alpha"],
                                  wm_images().shape[1], WM["width"], WM["msg_dim"])


def make_attack_layer():
    """The attacks of the DDP comparison: chains of 1-2 of noise (per-image random), JPEG, blur."""
    from watermark.attack_layer import AttackLayer

    return AttackLayer(WM_ATTACKS, max_chain=2, seed=0)


def wm_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """train_watermarker's global batch of ``step``: images (B, 1, 16, 16), messages (B, K), and
    the attack layer's seed."""
    from watermark.train import _gen, _seed

    images, g = wm_images(), _gen(WM["seed"], step, 0)
    idx = torch.randint(0, images.shape[0], (WM["batch_size"],), generator=g)
    m = torch.randint(0, 2, (WM["batch_size"], WM["num_bits"]), generator=g).float()
    return images[idx], m, _seed(WM["seed"], step, 1)


def make_regenerator() -> nn.Module:
    """A frozen image -> image stand-in for a regeneration model: a seeded 3x3 conv and a sigmoid."""
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Sigmoid())
    return net.requires_grad_(False).eval()


def wm_steps(aware: bool = False) -> dict[str, torch.Tensor]:
    """watermark.train.watermark_train_step, attacks on, SGD, under DDP: the weights after
    WM["steps"] steps and the global mean statistics each step returned (steps x 4, x 5 with
    `aware`: the idempotence loss at weight WM["idempotence_weight"], and make_regenerator()
    instead of the attack layer on even steps). Without DDP (one process) it is the reference."""
    from watermark.train import IDEM_STAT, STATS, EmbedAttackDecode, watermark_train_step

    wm = make_wm()
    module = dist.wrap(EmbedAttackDecode(wm, make_attack_layer(),
                                         make_regenerator() if aware else None))
    opt = torch.optim.SGD(module.parameters(), lr=WM["sgd_lr"])
    stats = []
    for step in range(WM["steps"]):
        x, m, attack_seed = wm_batch(step)
        extra = (dict(idempotence_weight=WM["idempotence_weight"], regenerate=step % 2 == 0)
                 if aware else {})
        out = watermark_train_step(module, opt, x, m, alpha=WM["alpha"],
                                   quality_weight=WM["quality_weight"], attack_seed=attack_seed,
                                   **extra)
        stats.append([out[k] for k in (*STATS, IDEM_STAT) if k in out])
    return {"state": wm.state_dict(), "stats": torch.tensor(stats, dtype=torch.float64)}


# the DDPM step (c): a tiny conditional UNet, DDPM["steps"] SGD steps, clipped, on batches of 5
DDPM = dict(steps=2, batch_size=5, classes=3, timesteps=50, lr=0.2, grad_clip=1.0)


def make_unet() -> nn.Module:
    """A tiny class-conditional ε-prediction UNet for (N, 1, 8, 8) images (attention included)."""
    from loops.models.unet import UNet

    torch.manual_seed(5)
    return UNet(in_channels=1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attn_resolution=4, num_classes=DDPM["classes"], groups=4, image_size=8)


def ddpm_batch(step: int) -> dict[str, torch.Tensor]:
    """The global batch of ``step``: x0 in [-1, 1], labels, t, noise, label-dropout mask."""
    g, b = torch.Generator().manual_seed(2000 + step), DDPM["batch_size"]
    return {"x0": torch.rand(b, 1, 8, 8, generator=g) * 2 - 1,
            "labels": torch.randint(0, DDPM["classes"], (b,), generator=g),
            "t": torch.randint(0, DDPM["timesteps"], (b,), generator=g),
            "noise": torch.randn(b, 1, 8, 8, generator=g),
            "drop_mask": torch.rand(b, generator=g) < 0.4}


def alphas_cumprod() -> torch.Tensor:
    from loops.models.ddpm import make_betas

    return torch.cumprod(1 - make_betas(DDPM["timesteps"]), 0)


def ddpm_steps() -> dict[str, torch.Tensor]:
    """loops.models.ddpm.ddpm_train_step under DDP; the state after DDPM["steps"] steps and the
    global mean losses it returned."""
    from loops.models.ddpm import ddpm_train_step

    net = dist.wrap(make_unet())
    opt = torch.optim.SGD(net.parameters(), lr=DDPM["lr"])
    losses = [ddpm_train_step(net, opt, **ddpm_batch(step), alphas_cumprod=alphas_cumprod(),
                              null_class=DDPM["classes"], grad_clip=DDPM["grad_clip"])
              for step in range(DDPM["steps"])]
    state = {k: v.detach().clone() for k, v in dist.unwrap(net).state_dict().items()}
    return {"state": state, "losses": torch.stack(losses)}


def collectives() -> dict[str, object]:
    r, w = dist.rank(), dist.world_size()
    out: dict[str, object] = {"rank": r, "world_size": w, "local_rank": dist.local_rank(),
                              "is_main": dist.is_main(),
                              "shards": [(s.start, s.stop) for s in map(dist.shard, (7, 1, 0))]}
    out["sum_f64"] = dist.all_reduce_sum(torch.arange(4, dtype=torch.float64) * (r + 1))
    out["sum_i64"] = dist.all_reduce_sum(torch.full((2, 2), 10 ** r, dtype=torch.int64))
    # unequal parts (rank r holds r + 2 rows), an empty part on rank 1, and 1-D integers
    out["cat_unequal"] = dist.all_gather_cat(torch.arange((r + 2) * 3, dtype=torch.float32)
                                             .view(r + 2, 3) + 100 * r)
    out["cat_empty"] = dist.all_gather_cat(torch.full((1 - r, 2), float(r + 1)))
    out["cat_all_empty"] = dist.all_gather_cat(torch.zeros(0, 2))
    out["cat_int"] = dist.all_gather_cat(torch.arange(r + 1, dtype=torch.int64) + 10 * r)
    out["broadcast"] = dist.broadcast_object({"from": r, "items": [r] * 3})
    dist.barrier()
    return out


def main_first_order(out_dir: str) -> bool:
    """Inside ``dist.main_first()``, rank 0 waits 0.5 s and writes a file; returns whether the
    file was there when this rank entered the block (rank 0: no; the others: yes)."""
    marker = Path(out_dir) / "main_first.txt"
    with dist.main_first():
        seen = marker.is_file()
        if dist.is_main():
            time.sleep(0.5)
            marker.write_text("rank 0 was here\n")
    dist.barrier()
    return seen


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init()
    result = {"collectives": collectives(), "conv": conv_steps(), "wm": wm_steps(),
              "wm_aware": wm_steps(aware=True),
              "wrapped": type(dist.wrap(nn.Linear(1, 1))).__name__,
              "main_first_saw_file": main_first_order(out_dir)}
    try:
        from loops.models import ddpm          # written in parallel: run (c) once it exists
    except ImportError:
        ddpm = None
    if hasattr(ddpm, "ddpm_train_step"):
        result["ddpm"] = ddpm_steps()
    torch.save(result, Path(out_dir) / f"rank{dist.rank()}.pt")
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
