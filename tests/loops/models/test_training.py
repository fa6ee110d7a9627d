"""loops.models.training, the scaffold of the neural models: EMA against a hand-computed update,
the index stream's epochs and draws, seeded construction, settings checks naming their key, the
sampling prelude, chunking, autocast choice and state round trips."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from loops.errors import LoopError
from loops.models import DDPMModel, FlowModel, WGANGPModel
from loops.models.training import (EMA, PRECISIONS, ShuffledIndices, autocast, autocast_dtype,
                                   begin_sampling, check_bool, check_choice, check_float,
                                   check_int, chunk_spans, freeze, load_module, map_chunks,
                                   module_state, require_fitted, seeded, unwrap_ddp, wrap_ddp)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- EMA ------------------------------------------------------------------------------------------
def test_ema_is_the_warmed_up_moving_average():
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 2.0]]))
        net.bias.fill_(0.5)
    ema = EMA(net, decay=0.5)
    assert ema.module is not net and not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in net.parameters())
    w, b = 1.0, 0.5                                        # hand-computed EMA of (weight[0], bias)
    for step, (new_w, new_b) in enumerate([(3.0, 1.5), (-1.0, 0.0), (5.0, 2.0)]):
        with torch.no_grad():
            net.weight[0, 0] = new_w
            net.bias.fill_(new_b)
        d = min(0.5, (1 + step) / (10 + step))            # 0.1, 2/11, 0.25: the warm-up wins
        w, b = d * w + (1 - d) * new_w, d * b + (1 - d) * new_b
        ema.update(step)
        assert float(ema.module.weight[0, 0]) == pytest.approx(w, rel=1e-6)
        assert float(ema.module.bias) == pytest.approx(b, rel=1e-6)
    assert float(ema.module.weight[0, 1]) == pytest.approx(2.0)      # unchanged parameter
    for step in range(100, 103):                                      # past the warm-up: decay
        with torch.no_grad():
            net.bias.fill_(float(step))
        b = 0.5 * b + 0.5 * step
        ema.update(step)
    assert float(ema.module.bias) == pytest.approx(b, rel=1e-6)


# -- data order ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n,b", [(10, 3), (7, 7), (5, 12)])
def test_index_stream_covers_each_row_once_per_epoch(n, b):
    order = ShuffledIndices(n, torch.Generator().manual_seed(0), torch.device("cpu"))
    batches = [order.next(b) for _ in range(6)]
    assert all(x.shape == (b,) and x.dtype == torch.long for x in batches)
    stream = torch.cat(batches)
    for epoch in stream.split(n)[:-1 if len(stream) % n else None]:
        assert sorted(epoch.tolist()) == list(range(n))


def test_index_stream_draws_permutations_only_when_it_runs_short():
    """The draws interleave with the caller's: the stream equals permutations taken from the same
    generator at the moments a batch needs them, with other draws in between."""
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    order = ShuffledIndices(5, g, torch.device("cpu"))
    first = order.next(4)
    torch.rand(2, generator=g)                             # the caller's draw between batches
    second = order.next(4)                                 # 1 left: one new permutation
    perm1 = torch.randperm(5, generator=ref)
    torch.rand(2, generator=ref)
    perm2 = torch.randperm(5, generator=ref)
    assert torch.equal(first, perm1[:4])
    assert torch.equal(second, torch.cat([perm1[4:], perm2[:3]]))
    assert torch.equal(g.get_state(), ref.get_state())


# -- seeded construction ------------------------------------------------------------------------
def test_seeded_block_is_reproducible_and_leaves_the_global_rng_alone():
    torch.manual_seed(11)
    state = torch.random.get_rng_state()
    nets = []
    for seed in (1, 1, 2):
        g = torch.Generator().manual_seed(seed)
        with seeded(g, torch.device("cpu")):
            nets.append(nn.Linear(4, 3))
        ref = torch.Generator().manual_seed(seed)
        drawn = int(torch.randint(0, 2 ** 62, (1,), generator=ref))
        assert torch.equal(g.get_state(), ref.get_state())  # exactly one draw from the generator
        torch.manual_seed(drawn)
        assert torch.equal(nets[-1].weight, nn.Linear(4, 3).weight)
        torch.random.set_rng_state(state)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(nets[0].weight, nets[1].weight)
    assert not torch.equal(nets[0].weight, nets[2].weight)


# -- settings checks ----------------------------------------------------------------------------
def test_checks_return_the_values():
    assert check_int("X", "k", 3) == 3 and check_int("X", "k", 4.0) == 4
    assert check_int("X", "k", 0, 0) == 0
    assert check_float("X", "lr", 1) == 1.0 and isinstance(check_float("X", "lr", 1), float)
    assert check_float("X", "p", 0.0, ge=0, lt=1) == 0.0
    assert check_float("X", "p", 1.0, ge=0, le=1) == 1.0
    assert check_choice("X", "mode", "b", ("a", "b")) == "b"
    assert check_bool("X", "flag", False) is False


@pytest.mark.parametrize("check,value,needle", [
    (lambda v: check_int("X", "steps", v), 2.5, "integer >= 1"),
    (lambda v: check_int("X", "steps", v), "3", "integer >= 1"),
    (lambda v: check_int("X", "steps", v), True, "integer >= 1"),
    (lambda v: check_int("X", "steps", v, 0), -1, "integer >= 0"),
    (lambda v: check_float("X", "lr", v, gt=0), 0.0, "> 0"),
    (lambda v: check_float("X", "lr", v, gt=0), "1e-4", "> 0"),
    (lambda v: check_float("X", "lr", v, gt=0), True, "> 0"),
    (lambda v: check_float("X", "lr", v), float("nan"), "finite number"),
    (lambda v: check_float("X", "lr", v, ge=0), float("inf"), ">= 0"),
    (lambda v: check_float("X", "lr", v, ge=0, lt=1), 1.0, "in [0, 1)"),
    (lambda v: check_float("X", "lr", v, gt=0, le=1), 0, "in (0, 1]"),
    (lambda v: check_float("X", "lr", v, lt=2), 2, "< 2"),
    (lambda v: check_choice("X", "lr", v, ("a", "b", "c")), "d", "a, b or c"),
    (lambda v: check_choice("X", "lr", v, ("a", "b")), None, "a or b"),
    (lambda v: check_bool("X", "lr", v), "false", "true or false"),
    (lambda v: check_bool("X", "lr", v), 1, "true or false")])
def test_checks_refuse_and_name_the_key(check, value, needle):
    with pytest.raises(LoopError) as info:
        check(value)
    key = "steps" if "steps" in info.value.problem else "lr"
    assert f"model.{key}" in info.value.fix and needle in info.value.fix
    assert info.value.problem.startswith(("X ", "unknown X"))


@pytest.mark.parametrize("kwargs", [
    {"timesteps": 50.5}, {"timesteps": "50"}, {"sample_steps": 0}, {"train_steps": 2.5},
    {"batch_size": "32"}, {"sample_batch_size": 0}, {"base_channels": 0}, {"groups": 0},
    {"patch_size": 0}, {"num_res_blocks": -1}, {"attn_resolution": 1.5}, {"channel_mult": (1, 0)},
    {"dropout": 1.0}, {"epochs": -1.0}, {"lr": 0.0}, {"lr": "2e-4"}, {"weight_decay": -1.0},
    {"warmup_steps": -1}, {"grad_clip": float("nan")}, {"ema_decay": 1.0}, {"label_dropout": 1.0},
    {"num_classes": -1}, {"use_labels": "false"}, {"ddim_eta": -0.5}, {"clip_denoised": None},
    {"precision": "fp16"}, {"beta_start": 0.0}, {"beta_end": 1.0}])
def test_ddpm_refuses_bad_settings_naming_the_key(kwargs):
    small = dict(timesteps=50, beta_start=2e-3, beta_end=0.2, sample_steps=10)
    with pytest.raises(LoopError, match=f"model\\.{next(iter(kwargs))}"):
        DDPMModel(**{**small, **kwargs})


def test_valid_settings_keep_their_values():
    m = DDPMModel(timesteps=50.0, beta_start=2e-3, beta_end=0.2, sample_steps=10, batch_size=16,
                  lr=1, epochs=0, num_classes=0, warmup_steps=0, channel_mult=[1, 2])
    assert (m.timesteps, m.batch_size, m.lr, m.epochs, m.num_classes_cfg) == (50, 16, 1.0, 0.0, 0)
    assert m.channel_mult == (1, 2) and isinstance(m.timesteps, int)
    assert WGANGPModel(lr=1, gp_weight=0).betas == (0.0, 0.9)
    with pytest.raises(LoopError, match="model.lr"):
        WGANGPModel(lr="1e-4")
    with pytest.raises(LoopError, match="model.schedule"):
        FlowModel(schedule=None)


# -- autocast, DDP ------------------------------------------------------------------------------
def test_autocast_is_bf16_on_cuda_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert all(autocast_dtype(cpu, p) is None for p in PRECISIONS)
    assert autocast_dtype(cuda, "auto") == autocast_dtype(cuda, "bf16") == torch.bfloat16
    assert autocast_dtype(cuda, "fp32") is None
    with autocast(cpu, None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(cpu, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_single_process_ddp_wrap_is_the_net_in_train_mode():
    net = nn.Linear(2, 2).eval()
    assert wrap_ddp(net) is net and net.training
    assert unwrap_ddp(net) is net
    assert freeze(net) is net and not net.training and not net.weight.requires_grad


# -- sampling and state -------------------------------------------------------------------------
class _Model:
    net = None


def test_begin_sampling_checks_fit_and_bias_and_gives_the_devices():
    model = _Model()
    with pytest.raises(LoopError, match="_Model is not fitted"):
        begin_sampling(model, model.net, 1.0, None)
    model.net = nn.Linear(2, 2)
    with pytest.raises(LoopError, match="outside"):
        begin_sampling(model, model.net, 0.0, None)
    s = begin_sampling(model, model.net, 1, torch.Generator())
    assert s == (1.0, torch.device("cpu"), torch.device("cpu")) and isinstance(s.bias, float)
    assert require_fitted(model, model.net) is model.net


def test_chunking():
    assert list(chunk_spans(7, 3)) == [(0, 3), (3, 3), (6, 1)] and list(chunk_spans(0, 3)) == []
    sizes = []
    x = torch.arange(10.0).view(5, 2)
    out = map_chunks(lambda c: sizes.append(len(c)) or 2 * c, x, 2)
    assert sizes == [2, 2, 1] and torch.equal(out, 2 * x)
    assert map_chunks(lambda c: c + 1, torch.empty(0, 3), 4).shape == (0, 3)


def test_module_state_round_trip():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    state = {**module_state(net, "net"), "other": torch.tensor(1), "netx.w": torch.zeros(1)}
    assert set(state) == {"net.0.weight", "net.0.bias", "net.1.weight", "net.1.bias",
                          "net.1.running_mean", "net.1.running_var", "net.1.num_batches_tracked",
                          "other", "netx.w"}
    assert state["net.0.weight"] is not net[0].weight and not state["net.0.weight"].requires_grad
    fresh = load_module(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), state, "net")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 net.state_dict().values()))
    assert not fresh.training and not any(p.requires_grad for p in fresh.parameters())
