"""train_watermarker: learns real digits well above chance; checkpoint + resume is exact; the
autophagy-aware options (idempotence loss, regeneration steps) are their closed forms, and off they
train exactly as before."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import watermark.train as train_module
from watermark import LearnedWatermarker
from watermark.attack_layer import AttackLayer
from watermark.train import (IDEM_STAT, STATS, EmbedAttackDecode, latest_checkpoint,
                             regeneration_step, train_watermarker, watermark_train_step)


@pytest.mark.slow        # ~40 s; the train-step and recipe tests cover the trainer by default
def test_short_training_on_digits_beats_chance(digits, tmp_path):
    # Measured (1 thread): 16 bits, width 16, 240 steps ~ 30 s -> clean bit acc ~ 0.99, PSNR ~ 31 dB.
    model, log = train_watermarker(digits[:4000], digits[4000:], num_bits=16, work_size=28, alpha=0.05,
                                   steps=240, batch_size=32, lr=3e-3, attack_names=("noise",), seed=0,
                                   width=16, msg_dim=16, val_every=0, val_images=200,
                                   checkpoint_dir=str(tmp_path))
    final = log[-1]
    assert final["step"] == 240
    assert final["bit_acc"] >= 0.9, final
    assert final["psnr"] >= 26, final
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[-1]["bit_acc"] == final["bit_acc"]


def test_resume_reproduces_uninterrupted_run(digits, tmp_path):
    kw = dict(num_bits=8, work_size=28, alpha=0.05, steps=12, batch_size=8, lr=1e-3,
              attack_names=("jpeg", "noise", "blur"), seed=3, width=8, msg_dim=8, val_every=0,
              val_images=16, alpha_boost=2.0, warmup_frac=0.25, ramp_frac=0.25)
    x_tr, x_va = digits[:256], digits[256:300]
    ref, _ = train_watermarker(x_tr, x_va, **kw, checkpoint_dir=str(tmp_path / "a"))
    # an interruption after step 6: a run with checkpoints every 6 steps, its final checkpoint removed
    train_watermarker(x_tr, x_va, **kw, checkpoint_dir=str(tmp_path / "b"), checkpoint_every=6)
    ck = latest_checkpoint(str(tmp_path / "b"))
    assert ck.endswith("step_0000012")
    shutil.rmtree(ck)
    (tmp_path / "b" / "latest.json").write_text(json.dumps({"step": 6, "dir": "step_0000006"}))
    resumed, log = train_watermarker(x_tr, x_va, **kw, checkpoint_dir=str(tmp_path / "b"), resume=True)
    a, b = ref.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert log[-1]["step"] == 12


# ---- autophagy-aware options: the idempotence loss and regeneration steps ------------------------
class ConstantResidual(LearnedWatermarker):
    """E(x, m) = x + theta r (no clamp): E(E(x)) - E(x) = theta r whatever x; the logits are a
    learned bias that ignores the image, so only the quality and idempotence terms move theta."""

    def __init__(self, residual: torch.Tensor):
        super().__init__(num_bits=4, work_size=8, alpha=0.05, channels=1, width=8, msg_dim=4)
        self.r = residual
        self.theta = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.zeros(4))

    def embed_train(self, x, msg):
        return x + self.theta * self.r

    def decode_train(self, x):
        return self.bias.expand(x.shape[0], -1)


def test_idempotence_term_is_the_mean_square_of_a_constant_residual_over_alpha_squared():
    g = torch.Generator().manual_seed(0)
    r = 0.02 * torch.randn(1, 1, 8, 8, generator=g)
    x, m = torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 2, (6, 4), generator=g).float()
    alpha, qw, w, lr = 0.05, 0.1, 2.5, 0.01
    ms = float(r.square().mean()) / alpha ** 2          # mean (E(E(x)) - E(x))^2 / alpha^2
    wm = ConstantResidual(r)
    module = EmbedAttackDecode(wm, AttackLayer(["identity"], max_chain=1, seed=0))
    opt = torch.optim.SGD([wm.theta, wm.bias], lr=lr)
    out = watermark_train_step(module, opt, x, m, alpha=alpha, quality_weight=qw,
                               idempotence_weight=w, grad_clip=1e9)
    bit = F.binary_cross_entropy_with_logits(torch.zeros(6, 4), m).item()
    assert tuple(out) == (*STATS, IDEM_STAT)
    assert out[IDEM_STAT] == pytest.approx(ms, rel=1e-5)
    assert out["q_loss"] == pytest.approx(ms, rel=1e-5)          # the same unit as the quality loss
    assert out["loss"] == pytest.approx(bit + qw * ms + w * ms, rel=1e-5)
    # the gradient goes through both embeddings: d/dtheta of (qw + w) theta^2 ms is 2 (qw + w) ms
    # (with the first embedding detached, E(sg(x_w)) - x_w = sg(x_w) - x would give the w part 0)
    assert wm.theta.item() == pytest.approx(1 - lr * 2 * (qw + w) * ms, rel=1e-5)
    # off (weight 0): the plain statistics and no second embedding
    calls = []
    wm.embed_train = lambda x, msg: calls.append(1) or x + wm.theta * wm.r
    out = watermark_train_step(module, opt, x, m, alpha=alpha, quality_weight=qw, grad_clip=1e9)
    assert tuple(out) == STATS and len(calls) == 1


class CountingRegenerator(nn.Module):
    """A frozen 3x3 blur (a stand-in for a VAE reconstruction) that counts its training calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 9)
        self.requires_grad_(False).eval()
        self.train_calls, self.eval_calls = 0, 0

    def forward(self, x):
        if torch.is_grad_enabled():
            self.train_calls += 1
        else:
            self.eval_calls += 1
        return self.conv(x)


def test_regenerated_logits_and_gradients_reach_the_embedder_through_the_frozen_regenerator():
    torch.manual_seed(0)
    wm = LearnedWatermarker(num_bits=8, work_size=16, alpha=0.05, channels=1, width=8, msg_dim=8)
    regen = CountingRegenerator()
    module = EmbedAttackDecode(wm, AttackLayer(["noise"], max_chain=1, seed=0), regen)
    assert "regenerator" not in dict(module.named_children())     # not trained, not in DDP's view
    assert not any(k.startswith("regenerator") for k in module.state_dict())
    x, m = torch.rand(4, 1, 16, 16), torch.randint(0, 2, (4, 8)).float()
    x_w, logits = module(x, m, slice(0, 4), 4, True, regenerate=True)
    assert torch.allclose(logits, wm.decode_train(regen(x_w)))
    F.binary_cross_entropy_with_logits(logits, m).backward()
    grads = [p.grad for p in wm.embedder.parameters()]
    assert all(gr is not None for gr in grads) and sum(float(gr.abs().sum()) for gr in grads) > 0
    assert regen.conv.weight.grad is None and not regen.training
    module.train()                                   # the trainer's .train() leaves it in eval mode
    assert not regen.training


def test_regeneration_steps_come_with_the_configured_probability(digits):
    draws = [regeneration_step(0, s, 0.3) for s in range(4000)]
    assert abs(sum(draws) / 4000 - 0.3) < 0.025              # 3.5 binomial standard deviations
    regen = CountingRegenerator()
    kw = dict(num_bits=8, work_size=28, alpha=0.05, steps=40, batch_size=4, width=8, msg_dim=8,
              attack_names=("noise",), seed=1, val_every=0, val_images=8, warmup_frac=0.25,
              ramp_frac=0.25, checkpoint_every=0, regeneration_prob=0.3)
    _, log = train_watermarker(digits[:64], digits[64:72], regenerator=regen, **kw)
    # only attacked steps (from the warmup's end, step 10) draw; each draw of its own stream
    expected = sum(regeneration_step(1, s, 0.3) for s in range(10, 40))
    assert regen.train_calls == expected and 4 <= expected <= 16
    assert regen.eval_calls == 1 and "bit_acc_regen" in log[-1]   # validation reads it too
    with pytest.raises(ValueError, match="needs a regenerator"):
        train_watermarker(digits[:64], digits[64:72], **kw)
    for bad in (dict(regeneration_prob=1.5), dict(idempotence_weight=-1.0)):
        with pytest.raises(ValueError, match="regeneration_prob|idempotence_weight"):
            train_watermarker(digits[:64], digits[64:72], regenerator=regen, **{**kw, **bad})


def _step_before_the_aware_options(module, optimizer, images, messages, *, alpha, quality_weight,
                                   attack_seed=None, grad_clip=1.0, **new):
    """watermark_train_step as it was before the autophagy-aware options (commit 2e0d422),
    single process; the new arguments must be at their off values."""
    assert new == {"idempotence_weight": 0.0, "regenerate": False}, new
    from madcore import dist
    b = images.shape[0]
    rows, world = dist.shard(b), dist.world_size()
    core = getattr(module, "module", module)
    core.wm.alpha = alpha
    if attack_seed is not None:
        core.layer.generator.manual_seed(attack_seed)
    x, m = images[rows].to(core.wm.device), messages[rows].to(core.wm.device)
    module.train()
    x_w = core.wm.embed_train(x, m)
    x_a = core.layer(x_w, rows=rows, batch_size=b) if attack_seed is not None else x_w
    logits = core.wm.decode_train(x_a)
    bit_loss = F.binary_cross_entropy_with_logits(logits, m)
    q_loss = F.mse_loss(x_w, x) / alpha ** 2
    loss = bit_loss + quality_weight * q_loss
    share = (rows.stop - rows.start) / b
    optimizer.zero_grad(set_to_none=True)
    (loss * (share * world)).backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    optimizer.step()
    acc = ((logits > 0).float() == m).float().mean()
    stats = torch.stack([loss, bit_loss, q_loss, acc]).detach().double() * share
    return dict(zip(STATS, stats.tolist()))


def test_options_off_train_exactly_as_before(digits, monkeypatch):
    """With idempotence_weight 0 and regeneration_prob 0 (a regenerator passed or not) the weights
    and log equal those of the step as it was before the options, bit for bit: no second
    embedding, no regeneration draw, no regenerator call."""
    kw = dict(num_bits=8, work_size=28, alpha=0.05, steps=12, batch_size=8, width=8, msg_dim=8,
              attack_names=("jpeg", "noise", "blur"), seed=3, val_every=6, val_images=16,
              warmup_frac=0.25, ramp_frac=0.25, checkpoint_every=0)
    x_tr, x_va = digits[:256], digits[256:300]
    default, log_default = train_watermarker(x_tr, x_va, **kw)
    regen = CountingRegenerator()
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "regeneration_step",
                      lambda *a: pytest.fail("a regeneration draw with the option off"))
        off, log_off = train_watermarker(x_tr, x_va, regenerator=regen, idempotence_weight=0.0,
                                         regeneration_prob=0.0, **kw)
        patch.setattr(train_module, "watermark_train_step", _step_before_the_aware_options)
        before, log_before = train_watermarker(x_tr, x_va, **kw)
    assert regen.train_calls == regen.eval_calls == 0
    a, b, c = default.state_dict(), off.state_dict(), before.state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    strip = lambda log: [{k: v for k, v in r.items() if k != "time_s"} for r in log]  # noqa: E731
    assert strip(log_default) == strip(log_off) == strip(log_before)
    assert set(log_default[-1]) == {"step", "time_s", "alpha_eff", *STATS, "bit_acc",
                                    "bit_acc_jpeg50", "psnr"}


def test_resume_with_the_options_on_reproduces_the_uninterrupted_run(digits, tmp_path):
    """The regeneration draws are per (seed, step), the idempotence weight follows the schedule:
    a run with both options stopped after its step-6 checkpoint and resumed ends bit for bit."""
    kw = dict(num_bits=8, work_size=28, alpha=0.05, steps=12, batch_size=8, width=8, msg_dim=8,
              attack_names=("noise", "blur"), seed=5, val_every=0, val_images=16,
              warmup_frac=0.25, ramp_frac=0.25, idempotence_weight=1.0, regeneration_prob=0.5)
    x_tr, x_va = digits[:256], digits[256:300]
    ref, log = train_watermarker(x_tr, x_va, **kw, regenerator=CountingRegenerator(),
                                 checkpoint_dir=str(tmp_path / "a"))
    assert IDEM_STAT in log[-1] and {"idem_psnr_db", "bit_acc_regen"} <= set(log[-1])
    train_watermarker(x_tr, x_va, **kw, regenerator=CountingRegenerator(),
                      checkpoint_dir=str(tmp_path / "b"), checkpoint_every=6)
    shutil.rmtree(latest_checkpoint(str(tmp_path / "b")))
    (tmp_path / "b" / "latest.json").write_text(json.dumps({"step": 6, "dir": "step_0000006"}))
    regen = CountingRegenerator()
    resumed, _ = train_watermarker(x_tr, x_va, **kw, regenerator=regen,
                                   checkpoint_dir=str(tmp_path / "b"), resume=True)
    assert regen.train_calls == sum(regeneration_step(5, s, 0.5) for s in range(6, 12))
    a, b = ref.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
