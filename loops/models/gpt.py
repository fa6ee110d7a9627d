"""A small decoder-only transformer language model (GPT; Radford et al. 2018, nanoGPT-style) for the
text loop, trained from scratch on the pool's token sequences each generation.

    m = GPTModel(n_layer=4, n_head=4, d_model=128, steps=1000)
    m.fit(x, generator)                            # x (N, L) int64 token ids in [1, V); 0 is BOS
    s = m.sample(n, bias=0.8, generator=g)         # (n, L) int64: temperature τ = λ = 0.8
    ll = m.log_likelihood(x)                       # (N,) float64 nats per sequence

Network. Token embeddings (V, d) plus learned positional embeddings (L, d), ``n_layer`` pre-LN
blocks x ← x + Attn(LN(x)), x ← x + MLP(LN(x)) (causal multi-head self-attention through
``F.scaled_dot_product_attention(is_causal=True)``; MLP d → 4d → d with GELU), a final LayerNorm
and an output layer tied to the token embeddings, with no output for BOS (it is never a next
token; :meth:`GPTModel.next_logits` gives it −∞), so the model's next-token distribution, its
:meth:`GPTModel.log_likelihood` and what the shared sampler draws at τ = 1 are one and the same. Weights start as in GPT-2: N(0, 0.02²),
residual output projections N(0, 0.02² / (2 · n_layer)), biases 0.

Data. ``x`` (N, L) integer ids, BOS (0) excluded: sequence i is trained as the next-token
prediction [BOS, x_0 … x_{L−2}] → [x_0 … x_{L−1}] (cross entropy on all L positions), and L is
the context length of the fitted model (:attr:`seq_len`, the positional table's size).
V = ``vocab_size`` when set (it must exceed every id of the data: set it to the tokenizer's vocab
size so that V stays the same across generations even when samples stop using some tokens), else
the data's max id + 1.

Training. AdamW (β = 0.9, 0.95; weight decay on the matrices only: embeddings and linear
weights, not biases or LayerNorm gains), linear warm-up over ``warmup_steps`` then cosine decay
to 0.1 · lr at the last step, gradient clipping; an optional EMA of the weights
(:class:`~.training.EMA`, off by default: the cosine decay already anneals the weights, and at a
few thousand steps an EMA of 0.999 mostly averages in the high-lr phase). bf16 autocast on CUDA
(``precision``), fp32 on the CPU; DDP under torchrun, each rank taking its ``shard`` of every
global batch (the same batches and draws as one process). All randomness (initial weights and
dropout through :func:`~.training.seeded`, the data order through
:class:`~.training.ShuffledIndices`) comes from the fit's ``generator``.

Sampling is :meth:`TextLM.sample`'s (temperature τ = λ, top-p, a :class:`TokenChooser`, the same
generator draws); with ``kv_cache`` the per-step logits come from a key/value cache (one new
token per step through the network instead of the whole context), through the
:meth:`TextLM.logits_stepper` hook. Cache memory: n · n_layer · 2 · L · d floats for n sequences.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from madcore import dist

from ..errors import LoopError
from .base import FIT_STEPS, ProgressFn, fit_column
from .text_lm import BOS, TextLM
from .training import (EMA, PRECISIONS, ShuffledIndices, autocast, autocast_dtype, check_bool,
                       check_choice, check_float, check_int, freeze, load_module, map_chunks,
                       module_state, require_fitted, seeded, wrap_ddp)

_ARCH = ("n_layer", "n_head", "d_model", "vocab_size", "seq_len")
_BETAS = (0.9, 0.95)     # AdamW betas (nanoGPT / GPT-3)
_FINAL_LR = 0.1          # the cosine decay ends at this fraction of lr
_CHECK_EVERY = 100       # optimiser steps between checks that the loss is finite (each syncs a GPU)
_INIT_STD = 0.02         # GPT-2's weight initialisation


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``steps``: lr · (step + 1) / warmup
    during the warm-up, then a cosine from lr (first step after it) to 0.1 · lr (last step)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))
    return lr * (_FINAL_LR + (1 - _FINAL_LR) * 0.5 * (1 + math.cos(math.pi * t)))


# -- the network --------------------------------------------------------------------------------
#: per layer, the (keys, values) cache of incremental decoding: (B, n_head, L, d_model / n_head)
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; (B, T, d) -> (B, T, d)."""

    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, cache: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                pos: int = 0) -> torch.Tensor:
        """``cache``: this layer's (keys, values) (B, h, L, d/h); the T new positions' keys and
        values are written at ``pos`` … ``pos + T − 1`` and the queries attend to all before.
        With a cache, either ``pos == 0`` (a prefix) or T == 1 (one new token)."""
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
                   for z in self.qkv(x).split(d, dim=2))
        if cache is not None:
            keys, values = cache
            keys[:, :, pos:pos + t] = k
            values[:, :, pos:pos + t] = v
            k, v = keys[:, :, :pos + t], values[:, :, :pos + t]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); (B, T, d) -> (B, T, d)."""

    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache=None, pos: int = 0) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), cache, pos))
        return x + self.drop(self.mlp(self.ln2(x)))


class GPT(nn.Module):
    """Token ids (B, T) int64 -> next-token logits (B, T, V − 1) of the real tokens: column j is
    token j + 1 (BOS is never a next token, so it has no output); T ≤ ``seq_len``."""

    def __init__(self, vocab_size: int, seq_len: int, n_layer: int, n_head: int, d_model: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.seq_len, self.n_head, self.d_model = seq_len, n_head, d_model
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:          # residual outputs scaled down by depth (GPT-2)
                std = _INIT_STD / math.sqrt(2 * n_layer) if name.endswith(
                    ("attn.proj.weight", "mlp.2.weight")) else _INIT_STD
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, cache: Optional[KVCache] = None, pos: int = 0,
                last: bool = False) -> torch.Tensor:
        """Logits (B, T, V − 1), or (B, V − 1) of the last position only with ``last``. ``cache`` and
        ``pos``: incremental decoding, ``idx`` being the tokens at positions pos … pos + T − 1
        (see :meth:`CausalSelfAttention.forward`)."""
        h = self.trunk(idx, cache, pos)
        h = self.ln_f(h[:, -1] if last else h)
        return F.linear(h, self.wte.weight[BOS + 1:])           # tied output layer, BOS left out

    def trunk(self, idx: torch.Tensor, cache: Optional[KVCache] = None,
              pos: int = 0) -> torch.Tensor:
        """The residual stream (B, T, d) after the last block, before the final LayerNorm."""
        t = idx.shape[1]
        h = self.drop(self.wte(idx) + self.wpe(torch.arange(pos, pos + t, device=idx.device)))
        for i, block in enumerate(self.blocks):
            h = block(h, None if cache is None else cache[i], pos)
        return h

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-layer hidden states (B, T, d): after the final LayerNorm, before the output
        layer (what :meth:`forward`'s logits are a linear map of)."""
        return self.ln_f(self.trunk(idx))

    def empty_cache(self, b: int, dtype: torch.dtype) -> KVCache:
        """Zeroed (keys, values) of every layer for ``b`` sequences, on the weights' device."""
        shape = (b, self.n_head, self.seq_len, self.d_model // self.n_head)
        device = self.wte.weight.device
        return [(torch.zeros(shape, dtype=dtype, device=device),
                 torch.zeros(shape, dtype=dtype, device=device)) for _ in self.blocks]


# -- the model ----------------------------------------------------------------------------------
class GPTModel(TextLM):
    """Decoder-only transformer language model of token sequences (N, L) int64.

    Args (Hydra keys of ``configs/model/gpt.yaml``):
        n_layer, n_head, d_model: transformer blocks, attention heads (must divide d_model) and
            width.
        dropout: dropout on the embeddings, attention weights and residual branches (0 = off).
        vocab_size: V, the number of token ids including BOS; must exceed every id of the data.
            None: the data's max id + 1 (then V may shrink across generations: set it to the
            tokenizer's vocab size).
        steps: optimiser steps per fit.
        batch_size: sequences per optimiser step (the global batch under torchrun).
        lr, weight_decay: AdamW peak learning rate and decoupled weight decay (matrices only).
        warmup_steps: linear warm-up steps before the cosine decay to 0.1 · lr.
        grad_clip: max gradient norm; 0 = off.
        ema_decay: EMA decay of the weights that sample; 0 = off (sample with the trained ones).
        top_p: nucleus of the sampler (None = the full distribution).
        kv_cache: sample with a key/value cache (same samples, faster); false recomputes the
            whole context each step (the plain :meth:`TextLM.sample`).
        eval_batch_size: sequences per forward pass of :meth:`log_likelihood`.
        precision: ``auto`` / ``bf16`` (bf16 autocast on CUDA, fp32 on the CPU) or ``fp32``.

    Labels given to ``fit`` are ignored (unconditional)."""

    fit_columns = (
        fit_column("xent", "next-token cross entropy of the training batches, mean of the last "
                   "10% of steps", "nats per token"),
        fit_column("xent_initial", "the same over the first 10% of steps", "nats per token"),
        FIT_STEPS,
    )

    def __init__(self, n_layer: int = 4, n_head: int = 4, d_model: int = 128,
                 dropout: float = 0.0, vocab_size: Optional[int] = None, steps: int = 1000,
                 batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.1,
                 warmup_steps: int = 100, grad_clip: float = 1.0, ema_decay: float = 0.0,
                 top_p: Optional[float] = None, kv_cache: bool = True,
                 eval_batch_size: int = 256, precision: str = "auto") -> None:
        m = "GPT"
        self.n_layer = check_int(m, "n_layer", n_layer)
        self.n_head = check_int(m, "n_head", n_head)
        self.d_model = check_int(m, "d_model", d_model)
        if self.d_model % self.n_head:
            fit = max(h for h in range(1, self.n_head + 1) if self.d_model % h == 0)
            raise LoopError(f"GPT n_head={n_head} does not divide d_model={d_model}",
                            f"set model.n_head to a divisor of model.d_model (e.g. {fit})")
        self.dropout = check_float(m, "dropout", dropout, ge=0, lt=1)
        self.vocab_setting = None if vocab_size is None else check_int(m, "vocab_size",
                                                                       vocab_size, low=2)
        self.steps = check_int(m, "steps", steps)
        self.batch_size = check_int(m, "batch_size", batch_size)
        self.lr = check_float(m, "lr", lr, gt=0)
        self.weight_decay = check_float(m, "weight_decay", weight_decay, ge=0)
        self.warmup_steps = check_int(m, "warmup_steps", warmup_steps, low=0)
        self.grad_clip = check_float(m, "grad_clip", grad_clip, ge=0)
        self.ema_decay = check_float(m, "ema_decay", ema_decay, ge=0, lt=1)
        self.top_p = None if top_p is None else check_float(m, "top_p", top_p, gt=0, le=1)
        self.kv_cache = check_bool(m, "kv_cache", kv_cache)
        self.eval_batch_size = check_int(m, "eval_batch_size", eval_batch_size)
        self.precision = check_choice(m, "precision", precision, PRECISIONS)
        self.net: Optional[GPT] = None            # set by fit / load_state_dict
        self.loss_curve: Optional[torch.Tensor] = None   # (steps,) training loss, on the CPU

    def _build(self) -> GPT:
        return GPT(self.vocab_size, self.seq_len, self.n_layer, self.n_head, self.d_model,
                   self.dropout)

    # -- training ------------------------------------------------------------------------------
    def _id_range(self, x: torch.Tensor, what: str,
                  vocab_size: Optional[int]) -> tuple[int, Optional[int]]:
        """``vocab_size`` (or the data's max id + 1 when None) after checking that ``x`` is
        (N, L) integer ids in [1, vocab_size); else a one-line LoopError. Also returns the
        max id (None when x is empty)."""
        if x.ndim != 2 or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise LoopError(f"GPTModel got {what} of shape {tuple(x.shape)}, dtype {x.dtype}",
                            "use token sequences (N, L) int64 (a text data source)")
        if x.numel() == 0:
            return vocab_size or 2, None
        low, high = (int(v) for v in torch.aminmax(x))
        vocab_size = vocab_size or high + 1
        if low <= BOS:
            raise LoopError(f"GPTModel {what} hold token id {low} (0 is BOS, reserved)",
                            "give ids in [1, vocab_size): the tokenizer must keep id 0 for BOS")
        if high >= vocab_size:
            raise LoopError(f"GPTModel {what} hold token id {high} >= vocab_size={vocab_size}",
                            f"set model.vocab_size to the tokenizer's vocab size (>= {high + 1}) "
                            "or null (the data's max id + 1)")
        return vocab_size, high

    def fit(self, x: torch.Tensor, generator: torch.Generator,
            progress: Optional[ProgressFn] = None,
            labels: Optional[torch.Tensor] = None) -> dict[str, float]:
        """Train from scratch on x (N, L) integer token ids in [1, V); ``labels`` are ignored.

        Returns ``xent`` and ``xent_initial`` (the training cross entropy in nats per token,
        mean of the last and the first 10% of steps) and ``steps``. Raises LoopError if the loss
        is not finite (the training diverged)."""
        vocab, high = self._id_range(x, "data", self.vocab_setting)
        if high is None:
            raise LoopError(f"GPTModel got no tokens (data of shape {tuple(x.shape)})",
                            "check the data source or the previous generation's samples")
        if self.batch_size < dist.world_size():
            raise LoopError(f"model.batch_size={self.batch_size} < {dist.world_size()} ranks",
                            "raise model.batch_size (it is the global batch)")
        self.vocab_size, self.seq_len = vocab, int(x.shape[1])
        device = x.device
        with seeded(generator, device):                   # init (on CPU, then moved) and dropout
            net = self._build().to(device)
            losses = self._train(net, x.long(), generator, progress)
        self.loss_curve = losses.cpu()
        tail = max(1, self.steps // 10)
        return {"xent": float(self.loss_curve[-tail:].mean()),
                "xent_initial": float(self.loss_curve[:tail].mean()), "steps": float(self.steps)}

    def _train(self, net: GPT, x: torch.Tensor, g: torch.Generator,
               progress: Optional[ProgressFn]) -> torch.Tensor:
        """``steps`` AdamW steps on x (N, L) int64; sets ``self.net`` (the EMA copy when
        ema_decay > 0). Returns the per-step global batch loss (steps,) on x's device."""
        device, (n, length), b, steps = x.device, x.shape, self.batch_size, self.steps
        ema = EMA(net, self.ema_decay) if self.ema_decay > 0 else None
        model = wrap_ddp(net)
        matrices = [p for p in net.parameters() if p.dim() >= 2]
        others = [p for p in net.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": matrices, "weight_decay": self.weight_decay},
                                 {"params": others, "weight_decay": 0.0}], lr=self.lr,
                                betas=_BETAS, fused=device.type == "cuda")
        amp = autocast_dtype(device, self.precision)
        order = ShuffledIndices(n, g, device)
        losses = torch.empty(steps, device=device)
        rows, world, tokens = dist.shard(b), dist.world_size(), b * length
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, self.lr, self.warmup_steps)
            target = x[order.next(b)][rows]                              # (b_r, L)
            inp = torch.cat([torch.full_like(target[:, :1], BOS), target[:, :-1]], dim=1)
            with autocast(device, amp):
                logits = model(inp)
            nll = F.cross_entropy(logits.float().flatten(0, 1), target.flatten() - 1,
                                  reduction="sum")
            opt.zero_grad(set_to_none=True)
            (nll * (world / tokens)).backward()                # DDP averages: the global mean
            if self.grad_clip > 0:
                nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
            opt.step()
            if ema is not None:
                ema.update(step)
            losses[step] = dist.all_reduce_sum(nll.detach() / tokens)
            if (step + 1) % _CHECK_EVERY == 0 or step + 1 == steps:
                recent = losses[max(0, step + 1 - _CHECK_EVERY):step + 1]
                if not bool(torch.isfinite(recent).all()):
                    raise LoopError(f"GPT training diverged (non-finite loss by step {step + 1})",
                                    f"lower model.lr (now {self.lr:g}, e.g. to {self.lr / 4:g}) "
                                    "or set model.grad_clip (e.g. 1)")
            if progress is not None:
                progress(step + 1, steps)
        self.net = freeze(ema.module if ema is not None else net)
        return losses

    # -- likelihood and sampling ---------------------------------------------------------------
    def _forward(self, idx: torch.Tensor, **kw) -> torch.Tensor:
        """The fitted network on ``idx`` (moved to the weights' device): float32 logits of the
        real tokens (…, V − 1) (see :class:`GPT`)."""
        net = require_fitted(self, self.net)
        device = net.wte.weight.device
        with autocast(device, autocast_dtype(device, self.precision)):
            return net(idx.to(device), **kw).float()

    def _last_logits(self, idx: torch.Tensor, **kw) -> torch.Tensor:
        """(B, V) float32 logits of the token after ``idx``, BOS's −∞, on ``idx``'s device."""
        real = self._forward(idx, last=True, **kw)
        bos = torch.full_like(real[:, :1], float("-inf"))
        return torch.cat([bos, real], dim=1).to(idx.device)

    @torch.no_grad()
    def next_logits(self, context: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) float32 of the token after ``context`` (B, T) int64 (BOS first,
        1 ≤ T ≤ seq_len), on the context's device; BOS's is −∞."""
        require_fitted(self, self.net)
        if context.ndim != 2 or not 1 <= context.shape[1] <= self.seq_len:
            raise LoopError(f"GPT context of shape {tuple(context.shape)}",
                            f"give (B, T) token ids with 1 <= T <= seq_len={self.seq_len}")
        return self._last_logits(context)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Natural-log likelihood (N,) float64 of each sequence x (N, L) int64, L ≤ seq_len:
        ``sum_t log p(x_t | BOS, x_<t)``, one forward pass per ``eval_batch_size`` sequences
        (log-softmax in float64), on x's device."""
        require_fitted(self, self.net)
        self._id_range(x, "sequences", self.vocab_size)
        if x.shape[1] > self.seq_len:
            raise LoopError(f"GPT sequences of length {x.shape[1]} > seq_len={self.seq_len}",
                            f"score sequences of at most {self.seq_len} tokens")
        if x.shape[1] == 0:
            return torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        device = self.net.wte.weight.device

        def score(chunk: torch.Tensor) -> torch.Tensor:
            inp = torch.cat([torch.full_like(chunk[:, :1], BOS), chunk[:, :-1]], dim=1)
            logp = torch.log_softmax(self._forward(inp).double(), dim=-1)     # tokens 1 … V−1
            return logp.gather(-1, chunk.unsqueeze(-1) - 1).squeeze(-1).sum(1)

        return map_chunks(score, x.long().to(device), self.eval_batch_size).to(x.device)

    def logits_stepper(self, n: int,
                       device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """With ``kv_cache``: the per-step logits of one ``sample`` call from a key/value cache
        (each step runs only the newest token through the network); past ``seq_len`` tokens the
        plain sliding window of :meth:`TextLM.logits_stepper`. Without: that plain one."""
        plain = super().logits_stepper(n, device)
        if not self.kv_cache:
            return plain
        net = require_fitted(self, self.net)
        wdev = net.wte.weight.device
        amp = autocast_dtype(wdev, self.precision)
        cache = net.empty_cache(int(n), amp or net.wte.weight.dtype)
        filled = [0]                                  # positions already in the cache

        def step(ctx: torch.Tensor) -> torch.Tensor:
            t = ctx.shape[1]
            if t > self.seq_len:
                return plain(ctx)
            if t != filled[0] + 1:
                raise RuntimeError(f"the KV cache holds {filled[0]} positions; got a context of "
                                   f"{t} (call once per step with the context so far)")
            filled[0] = t
            return self._last_logits(ctx[:, -1:], cache=cache, pos=t - 1)

        return step

    @torch.no_grad()
    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-layer hidden states (B, T, d_model) float32 of the input ids ``idx`` (B, T) int64
        (fed as given: prepend BOS yourself, as training does; T ≤ seq_len): after the final
        LayerNorm, before the output layer; eval mode (the fitted network is frozen), no grad,
        on ``idx``'s device."""
        net = require_fitted(self, self.net)
        if idx.ndim != 2 or not 1 <= idx.shape[1] <= self.seq_len:
            raise LoopError(f"GPT input of shape {tuple(idx.shape)}",
                            f"give (B, T) token ids with 1 <= T <= seq_len={self.seq_len}")
        device = net.wte.weight.device
        with autocast(device, autocast_dtype(device, self.precision)):
            return net.hidden_states(idx.to(device)).float().to(idx.device)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Network weights under ``net.`` and the architecture (``n_layer``, ``n_head``,
        ``d_model``, ``vocab_size``, ``seq_len``) as int64 scalars."""
        state = module_state(require_fitted(self, self.net), "net")
        state.update({k: torch.tensor(getattr(self, k), dtype=torch.int64) for k in _ARCH})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Rebuild the network from the saved architecture and load the weights (on their
        device); the architecture overrides this instance's, training settings stay."""
        missing = [k for k in _ARCH if k not in state]
        if missing:
            raise LoopError(f"GPTModel state lacks {missing}", "load a state saved by GPTModel")
        for k in _ARCH:
            setattr(self, k, int(state[k]))
        self.net = load_module(self._build(), state, "net")
