"""Short trials of the autophagy-aware options of the learned-watermark trainer on mnist5k (how
configs/recipe/digits32_aware.yaml's values were picked): the digits32 recipe (train-watermark's
defaults) with ``trainer.idempotence_weight`` and ``trainer.regeneration_prob`` (regeneration=vae:
the cached mnist5k VAE, fitted once, ~1 min, if it is not cached yet).

Run (from the repository root, one torch thread):

    python benchmarks/aware_card_trials.py --start 1800 --idempotence-weight 1     # 200 steps
    python benchmarks/aware_card_trials.py --start 1400 --regeneration-prob 0.25   # 600 steps
    python benchmarks/aware_card_trials.py --start 1800 --regeneration-prob 0.5 trainer.alpha=0.12

``--start S`` warm-starts from the shipped digits32 card: its weights are written as the trainer's
checkpoint at step S (fresh Adam state) and the run resumes from it, so it trains steps S..2000 of
the recipe's schedule (S >= 1200: the last, full-weight phase) with the given options. ``--start 0``
trains from scratch (the recipe needs ~2,000 steps to leave chance). Trailing arguments are
train-watermark overrides. Prints one JSON line of held-out metrics on 512 reference digits (random
messages per image): bit accuracy clean / JPEG-50, PSNR, idem_psnr_db and idem_layers (what a
second marking adds, eval/idempotence.py), bit accuracy after regen_vae at strength 0 (the
trainer's regenerator) and 0.5.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from eval.idempotence import idempotence
from madmark.regeneration import load_or_fit, training_regenerator
from watermark import load
from watermark.train import _gen, evaluate, train_watermarker


def warm_start(ckpt_dir: str, step: int, lr: float) -> None:
    """The digits32 card's weights as the checkpoint of `step` in `ckpt_dir` (fresh Adam)."""
    card = load("digits32")
    folder = os.path.join(ckpt_dir, f"step_{step:07d}")
    os.makedirs(folder)
    card.save(os.path.join(folder, "weights.safetensors"))
    torch.save(torch.optim.Adam(card.parameters(), lr=lr).state_dict(),
               os.path.join(folder, "optimizer.pt"))
    with open(os.path.join(folder, "state.json"), "w") as f:
        json.dump({"step": step}, f)
    with open(os.path.join(ckpt_dir, "latest.json"), "w") as f:
        json.dump({"step": step, "dir": os.path.basename(folder)}, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=int, default=1800)
    parser.add_argument("--idempotence-weight", type=float, default=0.0)
    parser.add_argument("--regeneration-prob", type=float, default=0.0)
    parser.add_argument("--eval-images", type=int, default=512)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_module("configs", version_base=None):
        cfg = compose("train_watermark", overrides=[
            "regeneration=vae", f"trainer.idempotence_weight={args.idempotence_weight}",
            f"trainer.regeneration_prob={args.regeneration_prob}", "trainer.val_every=0",
            "trainer.checkpoint_every=0", *args.overrides])
    splits = instantiate(cfg.data).load()
    cpu = torch.device("cpu")
    regen = training_regenerator(cfg.regeneration, splits, "MNIST5k", cpu)
    noisy = load_or_fit("regen_vae", cfg.regeneration.vae, splits, "MNIST5k",
                        cfg.regeneration.cache_dir, int(cfg.regeneration.seed), cpu)
    trainer = instantiate(cfg.trainer, _convert_="all")
    with tempfile.TemporaryDirectory(prefix="aware_trial_") as ckpt:
        if args.start:
            warm_start(ckpt, args.start, trainer.lr)
        t0 = time.time()
        model, _ = train_watermarker(splits.train, splits.reference, trainer, checkpoint_dir=ckpt,
                                     regenerator=regen if trainer.regeneration_prob > 0 else None)
        train_s = time.time() - t0
    ref = splits.reference[:args.eval_images]
    out = evaluate(model, ref, seed=0, idempotence=True, regenerator=regen)
    msgs = torch.randint(0, 2, (len(ref), model.num_bits), generator=_gen(0, -1, 9)).float()
    out.update(idempotence(lambda x: model.embed(x, msgs[:x.shape[0]]), ref, batch_size=len(ref)))
    marked = model.embed(ref, msgs)
    out["bit_acc_regen_s0.5"] = (model.decode_bits(
        noisy(marked, 0.5, torch.Generator().manual_seed(0))) == msgs).float().mean().item()
    out.update(start=args.start, steps=trainer.steps, idempotence_weight=trainer.idempotence_weight,
               regeneration_prob=trainer.regeneration_prob, overrides=args.overrides,
               train_s=round(train_s, 1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
