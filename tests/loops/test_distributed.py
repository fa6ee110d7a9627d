"""madcore.dist: single-process identities, shard partitions, and a real 2-process gloo run in
which DDP training steps equal the single-process steps on the same global batches."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from madcore import dist
from tests.loops import ddp_worker as worker

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- one process: rank 0 of 1 ------------------------------------------------------------------

def test_single_process_is_rank_zero_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist.init()                                     # no torchrun environment: a no-op
    assert not dist.is_initialized()
    assert (dist.rank(), dist.world_size(), dist.local_rank(), dist.is_main()) == (0, 1, 0, True)
    dist.barrier()
    assert dist.default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("n", [0, 1, 5, 1000])
def test_single_process_shard_is_the_whole_range(n):
    assert list(range(n))[dist.shard(n)] == list(range(n))


def test_single_process_reductions_are_identities():
    t = torch.randn(4, 3)
    before = t.clone()
    assert dist.all_reduce_sum(t) is t and torch.equal(t, before)
    assert dist.all_gather_cat(t) is t
    obj = {"a": [1, 2]}
    assert dist.broadcast_object(obj) is obj
    model = torch.nn.Linear(2, 2)
    assert dist.wrap(model) is model and dist.unwrap(model) is model


@pytest.mark.parametrize("world", [2, 3, 4, 5])
def test_shards_partition_the_range_like_numpy_array_split(monkeypatch, world):
    monkeypatch.setattr(dist, "world_size", lambda: world)
    for n in range(0, 3 * world + 2):
        parts = []
        for r in range(world):
            monkeypatch.setattr(dist, "rank", lambda r=r: r)
            parts.append(list(range(n))[dist.shard(n)])
        assert sum(parts, []) == list(range(n))
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
        assert parts == [a.tolist() for a in np.array_split(np.arange(n), world)]


# ---- two processes under torchrun (gloo, CPU) ----------------------------------------------------

@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Run ddp_worker.py under ``python -m torch.distributed.run --standalone --nproc_per_node=2``
    (torchrun picks a free port itself) and load what each rank wrote."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MADMARK_DIST_BACKEND": "gloo",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(Path(worker.__file__)), str(out)],
                          capture_output=True, text=True, env=env, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def test_two_ranks_see_their_place(ranks):
    for r, res in enumerate(ranks):
        c = res["collectives"]
        assert (c["rank"], c["world_size"], c["local_rank"], c["is_main"]) == (r, 2, r, r == 0)
        assert res["wrapped"] == "DistributedDataParallel"
    assert [res["collectives"]["shards"] for res in ranks] == [[(0, 4), (0, 1), (0, 0)],
                                                              [(4, 7), (1, 1), (0, 0)]]


def test_main_first_lets_rank_0_finish_the_block_first(ranks):
    assert [res["main_first_saw_file"] for res in ranks] == [False, True]


def test_single_process_main_first_just_runs_the_block(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ran = []
    with dist.main_first():
        ran.append(dist.rank())
    assert ran == [0]


def test_all_reduce_sum_over_two_ranks(ranks):
    for res in ranks:
        c = res["collectives"]
        assert torch.equal(c["sum_f64"], torch.arange(4, dtype=torch.float64) * 3)   # 1x + 2x
        assert torch.equal(c["sum_i64"], torch.full((2, 2), 11, dtype=torch.int64))  # 1 + 10


def test_all_gather_cat_with_unequal_and_empty_parts(ranks):
    parts = [torch.arange((r + 2) * 3, dtype=torch.float32).view(r + 2, 3) + 100 * r
             for r in (0, 1)]
    for res in ranks:
        c = res["collectives"]
        assert torch.equal(c["cat_unequal"], torch.cat(parts))
        assert torch.equal(c["cat_empty"], torch.ones(1, 2))          # rank 1 held no rows
        assert c["cat_all_empty"].shape == (0, 2)
        assert torch.equal(c["cat_int"], torch.tensor([0, 10, 11]))
        assert c["cat_int"].dtype == torch.int64
        assert c["broadcast"] == {"from": 0, "items": [0, 0, 0]}


def test_ddp_conv_net_steps_equal_single_process_steps(ranks):
    """Global batches of 7 split 4 / 3; the reference takes the plain mean loss of the batch."""
    model = worker.make_convnet()
    opt = torch.optim.SGD(model.parameters(), lr=worker.CONV_LR, momentum=0.9)
    for step in range(worker.CONV_STEPS):
        x, y = worker.conv_batch(step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    reference = model.state_dict()
    assert _max_diff(reference, worker.make_convnet().state_dict()) > 1e-2   # the steps moved it
    for res in ranks:
        assert _max_diff(res["conv"], reference) <= TOL


def plain_wm_steps(optimizer: str, layer) -> tuple[dict, torch.Tensor, list[list[str]]]:
    """The textbook watermark step in one process, without sharding or DDP: embed the whole global
    batch, attack it whole with ``layer`` (seeded as train.py seeds it), decode, BCE + quality
    loss, clip at 1, step. Returns the weights, the (steps, 4) statistics of watermark.train.STATS
    and the attack names drawn at each step. ``optimizer``: "adam" (train.py's) or "sgd"."""
    w, wm = worker.WM, worker.make_wm()
    params = list(wm.parameters())
    opt = (torch.optim.Adam(params, lr=w["lr"]) if optimizer == "adam"
           else torch.optim.SGD(params, lr=w["sgd_lr"]))
    stats, draws = [], []
    for step in range(w["steps"]):
        x, m, attack_seed = worker.wm_batch(step)
        layer.generator.manual_seed(attack_seed)
        wm.train()
        x_w = wm.embed_train(x, m)
        logits = wm.decode_train(layer(x_w))
        bit_loss = F.binary_cross_entropy_with_logits(logits, m)
        q_loss = F.mse_loss(x_w, x) / w["alpha"] ** 2
        loss = bit_loss + w["quality_weight"] * q_loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        acc = ((logits > 0).float() == m).float().mean()
        stats.append([t.item() for t in (loss, bit_loss, q_loss, acc)])
        draws.append([name for name, _ in layer.last])
    return wm.state_dict(), torch.tensor(stats, dtype=torch.float64), draws


def test_train_watermarker_takes_the_plain_single_process_step():
    """train_watermarker (Adam; warmup and ramp 0, so strength alpha, full quality weight and
    attacks from step 0) ends with the textbook loop's weights, bit for bit: the same initial
    weights, batches, messages and attack draws (identity, noise, JPEG, blur; chains of 1-2)."""
    from watermark.attack_layer import AttackLayer
    from watermark.train import train_watermarker

    w = worker.WM
    images = worker.wm_images()
    names = list(worker.WM_ATTACKS)
    model, log = train_watermarker(images, images[:4], num_bits=w["num_bits"],
                                   work_size=w["work_size"], alpha=w["alpha"], steps=w["steps"],
                                   batch_size=w["batch_size"], lr=w["lr"], attack_names=names,
                                   max_chain=2, seed=w["seed"], width=w["width"],
                                   msg_dim=w["msg_dim"], quality_weight=w["quality_weight"],
                                   warmup_frac=0.0, ramp_frac=0.0, val_every=0,
                                   checkpoint_every=0, val_images=4)
    layer = AttackLayer(["identity", *names], max_chain=2, seed=w["seed"])
    reference, stats, draws = plain_wm_steps("adam", layer)
    assert any("noise" in d for d in draws), draws          # the per-image random attack ran
    mine = model.state_dict()
    assert reference.keys() == mine.keys()
    assert all(torch.equal(reference[k], mine[k]) for k in reference)
    assert [log[-1][k] for k in ("loss", "bit_loss", "q_loss", "train_bit_acc")] == \
        stats[-1].tolist()


def test_ddp_watermark_steps_with_attacks_equal_single_process_steps(ranks):
    """watermark_train_step on 2 ranks (batch of 7 split 4 / 3, attacks on: noise drawn for the
    global batch and sliced, JPEG, blur) against the textbook step on the whole batch."""
    reference, stats, draws = plain_wm_steps("sgd", worker.make_attack_layer())
    assert sum("noise" in d for d in draws) >= 2 and any(len(d) == 2 for d in draws), draws
    assert _max_diff(reference, worker.make_wm().state_dict()) > 1e-2       # the steps moved it
    for res in ranks:
        assert _max_diff(res["wm"]["state"], reference) <= TOL
        assert torch.allclose(res["wm"]["stats"], stats, rtol=0, atol=1e-6)


def test_ddp_autophagy_aware_watermark_steps_equal_single_process_steps(ranks):
    """watermark_train_step with the idempotence loss (a second embedding in DDP's forward) and
    regeneration steps (a frozen regenerator kept out of DDP's parameters) on 2 ranks against the
    same steps in one process on the whole batch."""
    reference = worker.wm_steps(aware=True)
    assert reference["stats"].shape == (worker.WM["steps"], 5)
    assert _max_diff(reference["state"], worker.wm_steps()["state"]) > 1e-3   # the options act
    for res in ranks:
        assert _max_diff(res["wm_aware"]["state"], reference["state"]) <= TOL
        # the weights agree to TOL (float rounding of the 2-rank sum); the losses to the same
        assert torch.allclose(res["wm_aware"]["stats"], reference["stats"], rtol=0, atol=TOL)


def test_ddp_ddpm_steps_equal_single_process_steps(ranks):
    """(c) loops.models.ddpm.ddpm_train_step on 2 ranks (batch of 5 split 3 / 2, label dropout,
    clipping) against the plain single-process step: the ε-MSE mean over the whole batch."""
    ddpm = pytest.importorskip("loops.models.ddpm", reason="loops/models/ddpm.py not written yet")
    if not hasattr(ddpm, "ddpm_train_step"):
        pytest.skip("loops.models.ddpm has no single-step function ddpm_train_step")
    assert "ddpm" in ranks[0], "the worker found no ddpm_train_step (module changed meanwhile?)"
    p = worker.DDPM
    net = worker.make_unet()
    opt = torch.optim.SGD(net.parameters(), lr=p["lr"])
    ab_all, losses = worker.alphas_cumprod(), []
    for step in range(p["steps"]):
        b = worker.ddpm_batch(step)
        y = torch.where(b["drop_mask"], torch.full_like(b["labels"], p["classes"]), b["labels"])
        ab = ab_all[b["t"]].float().view(-1, 1, 1, 1)
        x_t = ab.sqrt() * b["x0"] + (1 - ab).sqrt() * b["noise"]
        loss = F.mse_loss(net(x_t, b["t"], y), b["noise"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), p["grad_clip"])
        opt.step()
        losses.append(loss.detach())
    reference = net.state_dict()
    assert _max_diff(reference, worker.make_unet().state_dict()) > 1e-2     # the steps moved it
    for res in ranks:
        assert _max_diff(res["ddpm"]["state"], reference) <= TOL
        assert torch.allclose(res["ddpm"]["losses"], torch.stack(losses), rtol=0, atol=1e-6)
