"""Training loop of `LearnedWatermarker`: embed -> random differentiable attacks -> decode.

    model, log = train_watermarker(x_train, x_val, TrainerConfig(num_bits=32, work_size=28, alpha=0.05),
                                   checkpoint_dir="runs/wm", resume=True)

x_train, x_val: (N, C, H, W) float in [0, 1] on CPU (H = W = work_size is cheapest: the networks run at
R anyway); on a CUDA device the training set is uploaded once (N C H W 4 bytes of GPU memory).
Losses per step, for a batch x, random messages m (N, K) and x_w = embed(x, m):
    bit loss          BCE-with-logits(decode(attack(x_w)), m)
    quality loss      mse(x_w, x) / alpha^2  (scale-free: 1 means a saturated +-alpha residual everywhere)
    idempotence loss  mse(embed(x_w, m), x_w) / alpha^2  (same unit: what a second marking adds;
                      computed only when idempotence_weight > 0, gradients through both embeddings)
    total             bit + quality_weight(step) * quality + idempotence_weight(step) * idempotence
(alpha: the step's strength.) The idempotence term (autophagy-aware cards) teaches the embedder to
add nothing to an image that already carries the mark, so a loop that marks the samples of models
trained on marked data does not stack layers.
Regeneration (autophagy-aware cards): with a `regenerator` (a frozen, differentiable image ->
image callable, e.g. a VAE reconstruction fitted on clean images of the same source; madmark
train-watermark builds it, watermark imports nothing from madmark) and regeneration_prob > 0, each
step with attacks on is, with that probability (drawn from its own stream (seed, step, 2)), a
regeneration step: the extractor reads regenerator(x_w) instead of the AttackLayer's draw, and
the embedder's gradients flow through the regenerator. With the defaults (idempotence_weight 0,
regeneration_prob 0) nothing extra is computed or drawn: training is the plain one, bit for bit.
Curriculum (chosen, after HiDDeN / VideoSeal practice of learning the channel before the constraints):
  * phase 1, steps [0, warmup): strength alpha * alpha_boost, no attacks, no quality loss -- the pair
    first learns *a* code quickly while the signal is strong;
  * phase 2, [warmup, warmup + ramp): strength decays geometrically to alpha, the quality and
    idempotence weights rise linearly to `quality_weight` and `idempotence_weight`, and the
    AttackLayer (attack_names + "identity", chains of up to `max_chain`) is applied to every batch
    (or the regenerator, on regeneration steps);
  * phase 3: target alpha, full quality and idempotence weights, attacks.
Adam (lr), gradient-norm clipping at 1.

One step is `watermark_train_step` on the module `EmbedAttackDecode` (embed -> attack -> decode, the
watermarker's own two networks). Under `torchrun --nproc_per_node=N` (madcore.dist) the same
code runs in every process: each draws the same global batch, messages and attack draws, computes
its contiguous share of the rows (madcore.dist.shard's partition) in a DistributedDataParallel
wrapper and scales its loss by n_local N / B, so the step is the single-process step on the global
batch (docs/scaling.md). Rank 0 alone validates, writes checkpoints and the metrics log and shows
the progress bar. The process group is torch.distributed's (started by the caller, e.g. madmark
train-watermark through madcore.dist.init); watermark imports nothing from loops.

Determinism and resume. Everything random at step t (batch indices, messages, attack draws) comes
from generators seeded with (seed, t), and the initial weights from `seed`, so a run resumed from a
checkpoint replays exactly the steps an uninterrupted run would (same final weights on CPU). A
checkpoint, every `checkpoint_every` steps and at the end, is a folder `step_XXXXXXX/` holding
`weights.safetensors`, `optimizer.pt` (Adam state, tensors only, loaded with weights_only=True) and
`state.json` (step, seed, config); it is written under a temp name and moved into place with
os.replace, then `latest.json` (also replaced atomically) points to it. Older folders beyond the last
two are deleted. Validation every `val_every` steps (and at the end) appends a dict to the metrics log:
bit accuracy clean and after real JPEG 50 (Pillow), PSNR (and, when the features are on,
idem_psnr_db and bit_acc_regen: see `evaluate`); the log is also `metrics.jsonl` there.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from madcore import dist
from madcore.files import atomic_directory, atomic_write_json
from madcore.quality import psnr

from .attack_layer import AttackLayer
from .attacks import apply_attack
from .learned import LearnedWatermarker

ProgressFn = Callable[[int, int, dict], None]
#: image batch (n, C, H, W) -> regenerated batch of the same shape, differentiable, frozen weights
RegeneratorFn = Callable[[torch.Tensor], torch.Tensor]
STATS = ("loss", "bit_loss", "q_loss", "train_bit_acc")
#: the extra statistic of a step with the idempotence loss on
IDEM_STAT = "idem_loss"


def _seed(seed: int, step: int, stream: int) -> int:
    """The seed of (seed, step, stream): the randomness of one step, replayable on resume."""
    return (seed * 1_000_003 + step) * 7 + stream


def _gen(seed: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator seeded with `_seed(seed, step, stream)`."""
    return torch.Generator().manual_seed(_seed(seed, step, stream))


def regeneration_step(seed: int, step: int, prob: float) -> bool:
    """Whether `step` (one with attacks on) is a regeneration step: one uniform draw of its own
    stream (seed, step, 2) below `prob`. Only called when regeneration is on (prob > 0 and a
    regenerator), so that the other streams never depend on it."""
    return bool(float(torch.rand((), generator=_gen(seed, step, 2))) < prob)


class EmbedAttackDecode(nn.Module):
    """The training pass as one module, what DDP wraps: its parameters are the watermarker's own
    (state_dict keys embedder.*, extractor.*, as `LearnedWatermarker.state_dict`).

    forward(x, m, rows, batch_size, attack, regenerate=False, twice=False) = (x_w, logits) or,
    with `twice`, (x_w, logits, x_ww): x (n, C, H, W) and m (n, K) are rows `rows` of a global
    batch of `batch_size`; x_w = embed_train(x, m) (n, C, H, W), logits (n, K) =
    decode_train(layer(x_w)) with attacks, decode_train(regenerator(x_w)) with `regenerate`,
    decode_train(x_w) with neither; x_ww = embed_train(x_w, m), the second marking (not detached).

    regenerator: the frozen image -> image callable of regeneration steps (RegeneratorFn). It is
    kept out of the module's submodules (not in state_dict or parameters(), not synchronised by
    DDP): it is not trained, and it acts on each image alone, so every rank applies it to its rows.
    """

    def __init__(self, wm: LearnedWatermarker, layer: AttackLayer,
                 regenerator: Optional[RegeneratorFn] = None):
        super().__init__()
        self.embedder, self.extractor, self.layer = wm.embedder, wm.extractor, layer
        self.wm = wm
        self.__dict__["regenerator"] = regenerator      # not registered (see the docstring)

    def forward(self, x: torch.Tensor, m: torch.Tensor, rows: slice, batch_size: int,
                attack: bool, regenerate: bool = False, twice: bool = False):
        x_w = self.wm.embed_train(x, m)
        if regenerate:
            if self.regenerator is None:
                raise ValueError("a regeneration step needs a regenerator")
            x_a = self.regenerator(x_w)
            if x_a.shape != x_w.shape:
                raise ValueError(f"the regenerator turned images {tuple(x_w.shape)} into "
                                 f"{tuple(x_a.shape)}; it must keep the shape")
        else:
            x_a = self.layer(x_w, rows=rows, batch_size=batch_size) if attack else x_w
        logits = self.wm.decode_train(x_a)
        if twice:
            return x_w, logits, self.wm.embed_train(x_w, m)
        return x_w, logits


def watermark_train_step(module: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                         messages: torch.Tensor, *, alpha: float, quality_weight: float,
                         attack_seed: int | None = None, grad_clip: float = 1.0,
                         idempotence_weight: float = 0.0,
                         regenerate: bool = False) -> dict[str, float]:
    """One optimiser step on the global batch; every rank passes the same arguments.

    module: an `EmbedAttackDecode`, DDP-wrapped under torchrun; images (B, C, H, W)
    in [0, 1] and messages (B, K) float {0, 1}: the global batch (moved to the model's device).
    This rank computes its rows (`madcore.dist.shard(B)`). alpha: embedding strength of this step; attack_seed:
    the attack layer's generator is seeded with it (the same on every rank), None = no attacks.
    regenerate: the extractor reads the module's regenerator(x_w) instead of the attack layer's.
    Loss: BCE(logits, m) + quality_weight mse(x_w, x) / alpha^2 [+ idempotence_weight
    mse(embed(x_w, m), x_w) / alpha^2 when idempotence_weight > 0], means over the global batch;
    gradient norm clipped at grad_clip. Returns the global means of STATS (identical on every
    rank), and of IDEM_STAT (the unweighted idempotence loss) when idempotence_weight > 0.
    """
    b = images.shape[0]
    rows, world = dist.shard(b), dist.world_size()
    core = getattr(module, "module", module)           # inside DistributedDataParallel
    core.wm.alpha = alpha
    if attack_seed is not None:
        core.layer.generator.manual_seed(attack_seed)
    x, m = images[rows].to(core.wm.device), messages[rows].to(core.wm.device)
    module.train()
    twice = idempotence_weight > 0
    if twice or regenerate:
        x_w, logits, *second = module(x, m, rows, b, attack_seed is not None, regenerate, twice)
    else:                                                # the plain step, exactly as it always was
        x_w, logits = module(x, m, rows, b, attack_seed is not None)
    bit_loss = F.binary_cross_entropy_with_logits(logits, m)
    q_loss = F.mse_loss(x_w, x) / alpha ** 2
    loss = bit_loss + quality_weight * q_loss
    names, extra = STATS, []
    if twice:
        idem_loss = F.mse_loss(second[0], x_w) / alpha ** 2
        loss = loss + idempotence_weight * idem_loss
        names, extra = (*STATS, IDEM_STAT), [idem_loss]
    share = (rows.stop - rows.start) / b                 # this rank's part of the global mean
    optimizer.zero_grad(set_to_none=True)
    (loss * (share * world)).backward()                 # DDP averages: the global-mean gradient
    torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    acc = ((logits > 0).float() == m).float().mean()
    stats = torch.stack([loss, bit_loss, q_loss, acc, *extra]).detach().double() * share
    dist.all_reduce_sum(stats)
    return dict(zip(names, stats.tolist()))


@torch.no_grad()
def evaluate(model: LearnedWatermarker, images: torch.Tensor, seed: int = 0, batch_size: int = 64,
             jpeg_quality: int = 50, *, idempotence: bool = False,
             regenerator: Optional[RegeneratorFn] = None) -> dict[str, float]:
    """Bit accuracy clean and after real JPEG (Pillow), and mean PSNR, on `images` (N, C, H, W).

    idempotence: also ``idem_psnr_db``, the PSNR of E(E(x, m), m) against E(x, m) pooled over all
    pixels (dB; inf when a second marking changes nothing; eval/idempotence.py's column).
    regenerator: also ``bit_acc_regen``, the bit accuracy after regenerator(E(x, m)) (it is given
    the images on the model's device). Neither changes the other numbers."""
    msgs = torch.randint(0, 2, (images.shape[0], model.num_bits), generator=_gen(seed, -1, 9)).float()
    ok_clean, ok_jpeg, ps, ok_regen, sq = [], [], [], [], 0.0
    for i in range(0, images.shape[0], batch_size):
        x, m = images[i:i + batch_size], msgs[i:i + batch_size]
        x_w = model.embed(x, m)
        ok_clean.append((model.decode_bits(x_w) == m).float())
        ok_jpeg.append((model.decode_bits(apply_attack(x_w, "jpeg_pil", jpeg_quality)) == m).float())
        ps.append(psnr(x_w, x).clamp(max=100))
        if idempotence:
            sq += float((model.embed(x_w, m) - x_w).double().square().sum())
        if regenerator is not None:
            x_r = regenerator(x_w.to(model.device)).to(x_w.device)
            ok_regen.append((model.decode_bits(x_r) == m).float())
    out = {"bit_acc": torch.cat(ok_clean).mean().item(), f"bit_acc_jpeg{jpeg_quality}": torch.cat(ok_jpeg).mean().item(),
           "psnr": torch.cat(ps).mean().item()}
    if idempotence:
        mse = sq / images.numel()
        out["idem_psnr_db"] = math.inf if mse == 0 else -10 * math.log10(mse)
    if regenerator is not None:
        out["bit_acc_regen"] = torch.cat(ok_regen).mean().item()
    return out


def _schedule(step: int, alpha: float, boost: float, warmup: int, ramp: int,
              weights: Sequence[float]) -> tuple[float, list[float], bool]:
    """(alpha_eff, the constraint weights `weights` (quality, idempotence) scaled to `step`,
    attacks on) at `step` for the curriculum of the module docstring."""
    if step < warmup:
        return alpha * boost, [0.0 for _ in weights], False
    t = min(1.0, (step - warmup + 1) / max(1, ramp))
    return alpha * boost ** (1 - t), [w * t for w in weights], True


def _save_checkpoint(ckpt_dir: str, step: int, model: LearnedWatermarker, opt: torch.optim.Optimizer,
                     state: dict, keep: int = 2) -> str:
    final = os.path.join(ckpt_dir, f"step_{step:07d}")
    with atomic_directory(final, replace=True) as tmp:
        model.save(tmp / "weights.safetensors")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    atomic_write_json(os.path.join(ckpt_dir, "latest.json"),
                      {"step": step, "dir": os.path.basename(final)}, indent=1)
    old = sorted(d for d in os.listdir(ckpt_dir) if d.startswith("step_"))
    for d in old[:-keep]:
        shutil.rmtree(os.path.join(ckpt_dir, d), ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: str) -> str | None:
    """Folder of the last complete checkpoint in `ckpt_dir`, or None."""
    p = os.path.join(ckpt_dir, "latest.json")
    if not os.path.isfile(p):
        return None
    with open(p) as f:
        d = os.path.join(ckpt_dir, json.load(f)["dir"])
    return d if os.path.isdir(d) else None


@dataclass
class TrainerConfig:
    """Everything `train_watermarker` learns with; the defaults here are the only ones (the
    command's configs/trainer/*.yaml start from this schema and change what a card needs).

    Model: num_bits K, work_size R (pixels of the working resolution), width (network channels),
    msg_dim (message embedding size), pool (decoder pooling size; None = the model's choice), jnd
    (perceptual mask). Curriculum (module docstring): alpha (target residual bound, [0, 1] pixel
    units), alpha_boost, warmup_frac and ramp_frac (fractions of `steps`), quality_weight,
    attack_names (AttackLayer attacks; "identity" is added) chained up to max_chain. Optimiser:
    steps, batch_size (global), lr (Adam). Randomness: seed. Logging: val_every and
    checkpoint_every (steps; 0 = off), val_images (validation images). Autophagy-aware training:
    idempotence_weight, regeneration_prob (below; both off by default, and off is the plain
    training bit for bit).
    """

    num_bits: int = 32
    work_size: int = 64
    alpha: float = 0.02
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    attack_names: list[str] = field(default_factory=lambda: ["jpeg", "blur", "noise", "resize"])
    seed: int = 0
    width: int = 32
    msg_dim: int = 32
    pool: Optional[int] = None
    jnd: bool = False
    max_chain: int = 1
    alpha_boost: float = 4.0
    warmup_frac: float = 0.3
    ramp_frac: float = 0.3
    quality_weight: float = 0.1
    val_every: int = 250
    checkpoint_every: int = 500
    val_images: int = 256
    #: weight (>= 0) of the idempotence loss mse(E(E(x, m), m), E(x, m)) / alpha^2, in the quality
    #: loss's unit (1 = a second marking adding a saturated +-alpha residual everywhere), ramped
    #: with the quality weight; 0 (default) = off, and the second embedding is not computed
    idempotence_weight: float = 0.0
    #: probability in [0, 1] that a step with attacks on is a regeneration step (the extractor
    #: reads regenerator(x_w), the train_watermarker argument, instead of an AttackLayer draw);
    #: 0 (default) = off, no draw is made; > 0 needs a regenerator
    regeneration_prob: float = 0.0


def train_watermarker(images_train: torch.Tensor, images_val: torch.Tensor,
                      config: TrainerConfig | None = None, *, device: str | torch.device = "cpu",
                      checkpoint_dir: str | None = None, resume: bool = True,
                      progress: bool | ProgressFn = False,
                      regenerator: Optional[RegeneratorFn] = None,
                      **settings) -> tuple[LearnedWatermarker, list[dict]]:
    """Train a LearnedWatermarker; returns (model in eval mode, metrics log). See the module docstring.

    config: the settings (`TrainerConfig`); keyword `settings` replace single fields of it (or of
    the defaults), e.g. ``train_watermarker(x, xv, num_bits=16, steps=100)``. progress: True for a
    tqdm bar, or a callback progress(step, steps, info). regenerator: the frozen, differentiable
    image -> image callable of regeneration steps (on `device`; used when regeneration_prob > 0,
    which needs it; e.g. madmark.regeneration's VAE reconstruction). Under torchrun every process
    calls it with the same arguments (batch_size is the global batch) and gets the same model and
    rank 0's log; only rank 0 writes to checkpoint_dir.
    """
    c = replace(config or TrainerConfig(), **settings)
    if not c.idempotence_weight >= 0:
        raise ValueError(f"idempotence_weight={c.idempotence_weight} must be >= 0")
    if not 0 <= c.regeneration_prob <= 1:
        raise ValueError(f"regeneration_prob={c.regeneration_prob} must be a probability in [0, 1]")
    if c.regeneration_prob > 0 and regenerator is None:
        raise ValueError(f"regeneration_prob={c.regeneration_prob} needs a regenerator")
    regen = regenerator if c.regeneration_prob > 0 else None
    channels = images_train.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        model = LearnedWatermarker(c.num_bits, c.work_size, c.alpha, channels, c.width, c.msg_dim,
                                   c.pool, c.jnd, device=device)
    config = {**asdict(replace(c, pool=model.pool)), "n_train": int(images_train.shape[0])}
    opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    layer = AttackLayer(list(dict.fromkeys(["identity", *c.attack_names])), max_chain=c.max_chain,
                        seed=c.seed)
    warmup, ramp = int(round(c.warmup_frac * c.steps)), int(round(c.ramp_frac * c.steps))
    x_val = images_val[:c.val_images]
    log: list[dict] = []
    world, start = dist.world_size(), 0
    main = dist.is_main()
    if c.batch_size < world:
        raise ValueError(f"batch_size {c.batch_size} < {world} processes: some would get no rows")
    if checkpoint_dir:
        if main:
            os.makedirs(checkpoint_dir, exist_ok=True)
        ck = latest_checkpoint(checkpoint_dir) if resume else None
        if ck:                                             # every rank loads the same checkpoint
            model.load_state_dict(load_file(os.path.join(ck, "weights.safetensors")))
            opt.load_state_dict(torch.load(os.path.join(ck, "optimizer.pt"), weights_only=True, map_location=device))
            with open(os.path.join(ck, "state.json")) as f:
                start = json.load(f)["step"]
            mpath = os.path.join(checkpoint_dir, "metrics.jsonl")
            if main and os.path.isfile(mpath):
                with open(mpath) as f:
                    log = [r for r in map(json.loads, f) if r["step"] <= start]
        dist.barrier()                                     # all have read it before rank 0 writes
        if main:
            with open(os.path.join(checkpoint_dir, "metrics.jsonl"), "w") as f:   # rewrite the kept part
                f.writelines(json.dumps(r) + "\n" for r in log)
    module = EmbedAttackDecode(model, layer, regen)
    module = dist.wrap(module)                             # DDP under torchrun

    bar = None
    if progress is True and main:
        from tqdm.auto import tqdm
        bar = tqdm(total=c.steps, initial=start, desc="train watermarker")
    n, t0, running = images_train.shape[0], time.time(), {}
    if model.device.type == "cuda":      # one upload, not a host gather + copy of every batch
        images_train = images_train.to(model.device)

    def record(step: int, a_eff: float) -> None:
        model.alpha = c.alpha     # validate at the target strength
        row = {"step": step, "time_s": round(time.time() - t0, 2), "alpha_eff": a_eff, **running,
               **evaluate(model, x_val, c.seed, idempotence=c.idempotence_weight > 0,
                          regenerator=regen)}
        log.append(row)
        if checkpoint_dir:
            with open(os.path.join(checkpoint_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")

    a_eff = c.alpha
    for step in range(start, c.steps):
        a_eff, (qw, iw), attacks_on = _schedule(step, c.alpha, c.alpha_boost, warmup, ramp,
                                                (c.quality_weight, c.idempotence_weight))
        g = _gen(c.seed, step, 0)
        idx = torch.randint(0, n, (c.batch_size,), generator=g)
        m = torch.randint(0, 2, (c.batch_size, c.num_bits), generator=g).float()
        x = images_train[idx.to(images_train.device)]
        regenerate = (regen is not None and attacks_on
                      and regeneration_step(c.seed, step, c.regeneration_prob))
        running = watermark_train_step(module, opt, x, m, alpha=a_eff, quality_weight=qw,
                                       attack_seed=_seed(c.seed, step, 1) if attacks_on else None,
                                       idempotence_weight=iw, regenerate=regenerate)
        done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(bit=f"{running['train_bit_acc']:.3f}", q=f"{running['q_loss']:.3f}")
        elif callable(progress) and main:
            progress(done, c.steps, running)
        if main and c.val_every and (done % c.val_every == 0) and done != c.steps:
            record(done, a_eff)
        if main and checkpoint_dir and c.checkpoint_every and done % c.checkpoint_every == 0 and done != c.steps:
            model.alpha = c.alpha
            _save_checkpoint(checkpoint_dir, done, model, opt,
                             {"step": done, "seed": c.seed, "config": config})
    if bar is not None:
        bar.close()
    if main and (start < c.steps or not log or log[-1]["step"] != c.steps):
        record(c.steps, a_eff)
    model.alpha = c.alpha
    if main and checkpoint_dir and start < c.steps:
        _save_checkpoint(checkpoint_dir, c.steps, model, opt,
                         {"step": c.steps, "seed": c.seed, "config": config})
    log = dist.broadcast_object(log)                       # rank 0's log, once it has written all
    model.train_config = config
    return model.eval(), log
