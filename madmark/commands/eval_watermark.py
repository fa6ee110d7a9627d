"""``madmark eval-watermark method=... data=...``: the attack × strength robustness table.

    madmark eval-watermark method=rgb48                        # one method
    madmark eval-watermark "method=[rgb48,dwtdct]" bits=48     # methods side by side, same images
    madmark eval-watermark data=shakespeare "method=[kgw,exp]" # text (eval_watermark_text.py)

For every entry of ``watermark.ATTACK_GRID`` (and "none"), on ``n_images`` held-out real images
(the data source's reference split), every method marks the same images with the same key: PSNR and
SSIM of the marked image, PSNR of the attacked image against the marked one (``attacked_psnr_db``,
NaN when the attack changes the size: how much of the image the attack kept), bit accuracy,
median log10 p-value and detection rate at ``alpha`` after the attack. The regeneration attacks
named in ``regeneration.attacks`` (:mod:`madmark.regeneration`: a VAE or latent diffusion fitted
once on the clean train split) follow the grid, one row per strength. An attack that leaves
images a method cannot read at all (invisible-watermark below 256 x 256 pixels, after a crop or a
downscale) is recorded as not applicable to it (``applicable`` False, metrics NaN, the reason in
``note``), not as a failure of the run. Writes ``metrics.csv``
(one row per method × attack × strength), ``comparison.md`` (bit accuracy / detection rate per
attack, one column per method) and ``plots/bit_accuracy.png`` (grouped bars) in the run directory.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from madcore.figures import new_figure, save_png
from madcore.files import atomic_write_text
from madcore.errors import MadmarkError
from madmark.hydra_app import run_hydra
from madmark.methods import build_method, secret_key
from madmark.regeneration import build_regenerators
from madmark.rundir import RunDir, environment, rows_to_csv
from madmark.text_run import TEXT_METHODS, data_is_text
from watermark import (ATTACK_GRID, Detector, SecretKey, UnsupportedImageError, apply_attack, psnr,
                       ssim)


def robustness_rows(method, key: SecretKey, images: torch.Tensor, alpha: float, seed: int,
                    label: str | None = None, regenerators: Sequence = ()) -> list[dict]:
    """One row per attack × strength (first row: no attack) for ``images`` (N, C, H, W);
    ``label`` names the method in the rows (default ``method.name``). ``regenerators``:
    (:class:`madmark.regeneration.Regenerator`, strengths) pairs, whose rows follow the grid's."""
    message = key.message(method.num_bits)
    marked = method.embed(images, message.expand(len(images), -1))
    quality = {"psnr_db": float(psnr(marked, images).mean()),
               "ssim": float(ssim(marked, images).mean())}
    detector = Detector(method, message, alpha=alpha)
    rows = []
    regen = {r.attack: r for r, _ in regenerators}
    grid = [("none", None), *ATTACK_GRID, *((r.attack, s) for r, strengths in regenerators
                                            for s in strengths)]
    for name, strength in grid:
        g = torch.Generator().manual_seed(seed)
        attacked = (marked if name == "none" else regen[name](marked, strength, generator=g)
                    if name in regen else apply_attack(marked, name, strength, generator=g))
        row = {"method": label or method.name, "bits": method.num_bits, "attack": name,
               "strength": "" if strength is None else str(strength), **quality,
               "attacked_size": "x".join(map(str, attacked.shape[-2:])),
               # what the attack did to the image: PSNR of the attacked vs the marked image
               "attacked_psnr_db": (float(psnr(attacked, marked).mean())
                                    if attacked.shape == marked.shape else math.nan)}
        try:
            result = detector(attacked)
        except UnsupportedImageError as error:
            rows.append({**row, "bit_accuracy": math.nan, "median_log10_p": math.nan,
                         "detection_rate": math.nan, "applicable": False,
                         "note": str(error).splitlines()[0], "alpha": alpha, "n_images": len(images)})
            continue
        log_p = torch.log10(result.p_value.clamp_min(1e-300))
        rows.append({**row, "bit_accuracy": float(result.bit_accuracy.mean()),
                     "median_log10_p": float(log_p.median()),
                     "detection_rate": float(result.flagged.double().mean()),
                     "applicable": True, "note": "", "alpha": alpha, "n_images": len(images)})
    return rows


def attack_label(row: dict) -> str:
    """"jpeg_pil 50", "none", ...: the attack and its strength as one label."""
    return f"{row['attack']} {row['strength']}".strip()


def by_method(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by method, in order of first appearance; each group in grid order."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["method"], []).append(r)
    return groups


def plot_bit_accuracy(rows: list[dict], path) -> None:
    """Grouped bars: bit accuracy per attack, one colour per method; "n/a" where not applicable."""

    groups = by_method(rows)
    labels = [attack_label(r) for r in next(iter(groups.values()))]
    width = 0.8 / len(groups)
    fig, ax = new_figure(figsize=(max(7, 0.45 * len(labels) * max(1, len(groups) ** 0.5)), 4.2))
    for j, (name, group) in enumerate(groups.items()):
        xs = [i + (j - (len(groups) - 1) / 2) * width for i in range(len(group))]
        accuracy = [r["bit_accuracy"] for r in group]
        ax.bar(xs, [0 if math.isnan(a) else a for a in accuracy], width,
               label=f"{name} ({group[0]['psnr_db']:.1f} dB, {group[0]['bits']} bits)")
        for x, a in zip(xs, accuracy):
            if math.isnan(a):
                ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=6)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(labels)), labels, rotation=70, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("bit accuracy")
    ax.set_title(f"bit accuracy after each attack, N = {rows[0]['n_images']} held-out images")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def comparison_markdown(rows: list[dict], data_name: str) -> str:
    """A Markdown table: one line per attack, "bit accuracy / detection rate" per method."""
    groups = by_method(rows)
    names = list(groups)
    first = next(iter(groups.values()))
    header = [f"{n} ({g[0]['psnr_db']:.1f} dB, SSIM {g[0]['ssim']:.3f}, {g[0]['bits']} bits)"
              for n, g in groups.items()]
    lines = [f"Bit accuracy / detection rate at α = {first[0]['alpha']} on {first[0]['n_images']} "
             f"held-out images of {data_name}; n/a: the attacked image is below the method's "
             "minimum size.", "", "| attack | " + " | ".join(header) + " |",
             "| --- |" + " --- |" * len(names)]
    for i, r in enumerate(first):
        cells = []
        for n in names:
            q = groups[n][i]
            cells.append("n/a" if not q["applicable"]
                         else f"{q['bit_accuracy']:.3f} / {q['detection_rate']:.2f}")
        lines.append(f"| {attack_label(r)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def method_names(value) -> list[str]:
    """``method=`` as a list of names: one name, or a list ``[a,b]``; duplicates rejected."""
    names = [str(value)] if isinstance(value, str) else [str(v) for v in value]
    if not names or len(set(names)) != len(names):
        raise MadmarkError(f"method={list(names)} must name one or more distinct methods",
                           "pass method=rgb48 or \"method=[rgb48,dwtdct]\"")
    return names


def evaluate(cfg: DictConfig) -> None:
    run = RunDir(HydraConfig.get().runtime.output_dir)
    names = method_names(cfg.method)
    key = secret_key("", cfg.key_file) if cfg.key_file else SecretKey.generate()
    text = data_is_text(cfg)
    if text:                                 # the text grid imports this module's helpers
        from madmark.commands.eval_watermark_text import check_text_settings, evaluate_text

        check_text_settings(cfg, names)      # before the corpus is read
    elif any(n in TEXT_METHODS for n in names):
        raise MadmarkError(f"method={next(n for n in names if n in TEXT_METHODS)} marks text, "
                           "but data is not text",
                           "use data=shakespeare (or data=textfile data.path=...), or an image "
                           "method such as method=spread_spectrum")
    torch.manual_seed(int(cfg.seed))
    splits = instantiate(cfg.data).load()
    data_name = str(cfg.data.get("_target_", "data")).rsplit(".", 1)[-1]
    if splits.kind not in ("image", "text"):
        raise MadmarkError(f"eval-watermark needs images or text, data gives {splits.kind}s",
                           "choose an image source, e.g. data=photos, or data=shakespeare")
    run.write_config(cfg)                    # holds key_file's path at most, never the key
    run.write_env(environment(int(cfg.seed), torch.device("cpu")))
    if text:
        return evaluate_text(cfg, run, names, key, splits, data_name)
    images = splits.reference[:int(cfg.n_images)]
    methods = [build_method(name, key, images.shape[-2], images.shape[-1], int(cfg.bits),
                            float(cfg.strength)) for name in names]
    regenerators = build_regenerators(cfg.regeneration, splits, data_name, torch.device("cpu"))
    rows = []
    for name, method in zip(names, methods):
        try:
            rows += robustness_rows(method, key, images, float(cfg.alpha), int(cfg.seed), name,
                                    regenerators)
        except UnsupportedImageError as error:            # the clean images already
            raise MadmarkError(f"method={name} cannot mark these images: {error}",
                               "choose RGB data of at least 256x256 (data=photos256) or another "
                               "method") from error
    atomic_write_text(run.path / "metrics.csv", rows_to_csv(rows))
    table = comparison_markdown(rows, f"{data_name} ({images.shape[-2]}x{images.shape[-1]})")
    atomic_write_text(run.path / "comparison.md", table)
    plot_bit_accuracy(rows, run.path / "plots" / "bit_accuracy.png")
    print(table, end="")
    print(f"wrote {run.path}")


def main(args: list[str]) -> int:
    return run_hydra("eval-watermark", evaluate, args, config_name="eval_watermark")
