"""``madmark eval-watermark method=... data=...``: the attack × strength robustness table.

For every entry of ``watermark.ATTACK_GRID`` (and "none"), on ``n_images`` held-out real images
(the data source's reference split): PSNR and SSIM of the marked image, bit accuracy, median
log10 p-value and detection rate at ``alpha`` after the attack. Writes ``metrics.csv`` (one row
per attack × strength) and ``plots/bit_accuracy.png`` in the run directory.
"""
from __future__ import annotations

import io

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from loops.checkpoint import atomic_write_bytes, atomic_write_text
from madmark.errors import MadmarkError
from madmark.hydra_app import run_hydra
from madmark.methods import build_method, secret_key
from madmark.rundir import RunDir, environment, rows_to_csv
from watermark import ATTACK_GRID, Detector, SecretKey, apply_attack, psnr, ssim


def robustness_rows(method, key: SecretKey, images: torch.Tensor, alpha: float,
                    seed: int) -> list[dict]:
    """One row per attack × strength (first row: no attack) for ``images`` (N, C, H, W)."""
    message = key.message(method.num_bits)
    marked = method.embed(images, message.expand(len(images), -1))
    quality = {"psnr_db": float(psnr(marked, images).mean()),
               "ssim": float(ssim(marked, images).mean())}
    detector = Detector(method, message, alpha=alpha)
    rows = []
    for name, strength in [("none", None), *ATTACK_GRID]:
        g = torch.Generator().manual_seed(seed)
        attacked = marked if name == "none" else apply_attack(marked, name, strength, generator=g)
        result = detector(attacked)
        log_p = torch.log10(result.p_value.clamp_min(1e-300))
        rows.append({"method": method.name, "attack": name,
                     "strength": "" if strength is None else str(strength), **quality,
                     "bit_accuracy": float(result.bit_accuracy.mean()),
                     "median_log10_p": float(log_p.median()),
                     "detection_rate": float(result.flagged.double().mean()),
                     "alpha": alpha, "n_images": len(images)})
    return rows


def plot_bit_accuracy(rows: list[dict], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['attack']} {r['strength']}".strip() for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(rows)), 4))
    ax.bar(range(len(rows)), [r["bit_accuracy"] for r in rows])
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)), labels, rotation=70, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("bit accuracy")
    ax.set_title(f"{rows[0]['method']}: PSNR {rows[0]['psnr_db']:.1f} dB, N = {rows[0]['n_images']}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def evaluate(cfg: DictConfig) -> None:
    run = RunDir(HydraConfig.get().runtime.output_dir)
    key = secret_key("", cfg.key_file) if cfg.key_file else SecretKey.generate()
    torch.manual_seed(int(cfg.seed))
    splits = instantiate(cfg.data).load()
    if splits.kind != "image":
        raise MadmarkError(f"eval-watermark needs images, data gives {splits.kind}s",
                           "choose an image source, e.g. data=photos")
    images = splits.reference[:int(cfg.n_images)]
    method = build_method(cfg.method, key, images.shape[-2], images.shape[-1], int(cfg.bits),
                          float(cfg.strength))
    run.write_config(cfg)                    # holds key_file's path at most, never the key
    run.write_env(environment(int(cfg.seed), torch.device("cpu")))
    rows = robustness_rows(method, key, images, float(cfg.alpha), int(cfg.seed))
    atomic_write_text(run.path / "metrics.csv", rows_to_csv(rows))
    plot_bit_accuracy(rows, run.path / "plots" / "bit_accuracy.png")
    width = max(len(f"{r['attack']} {r['strength']}") for r in rows)
    print(f"{'attack'.ljust(width)}  bit_acc  detect@{cfg.alpha}  median_log10_p")
    for r in rows:
        print(f"{(r['attack'] + ' ' + r['strength']).strip().ljust(width)}  "
              f"{r['bit_accuracy']:.3f}    {r['detection_rate']:.3f}        "
              f"{r['median_log10_p']:.1f}")
    print(f"PSNR {rows[0]['psnr_db']:.2f} dB, SSIM {rows[0]['ssim']:.4f}; wrote {run.path}")


def main(args: list[str]) -> int:
    return run_hydra("eval-watermark", evaluate, args, config_name="eval_watermark")
