"""madmark train-watermark writes a loadable card whose recorded metrics the loaded model reproduces;
under torchrun (2 gloo processes) it writes one run, from rank 0 alone."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from watermark import load_card
from watermark.train import evaluate, latest_checkpoint
from madmark.data import MNIST5k
from tests.madmark.conftest import run_dirs, torchrun_madmark

pytestmark = pytest.mark.usefixtures("one_torch_thread")     # 2 threads contend on small CPUs


def test_train_watermark_card_round_trip(cli, tmp_path):
    code, out, err = cli("train-watermark", "trainer.steps=30", "trainer.val_every=0", "trainer.checkpoint_every=15",
                         "eval_images=32", "card_name=tiny", f"out_dir={tmp_path / 'o'}")
    assert code == 0, err
    (card_path,) = (tmp_path / "o").rglob("tiny.yaml")
    model = load_card(card_path)
    assert model.card["metrics"]["n_eval_images"] == 32
    assert model.card["training"]["trainer"]["steps"] == 30
    reference = MNIST5k(seed=0).load().reference[:32]
    again = evaluate(model, reference, seed=0)
    for key in ("bit_acc", "bit_acc_jpeg50", "psnr"):
        assert again[key] == pytest.approx(model.card["metrics"][key], abs=1e-6), key
    assert (card_path.parent / "checkpoints").is_dir()


def test_card_alpha_sets_the_cards_strength_and_its_metrics(cli, tmp_path):
    code, out, err = cli("train-watermark", "trainer.steps=10", "trainer.val_every=0", "trainer.checkpoint_every=0",
                         "eval_images=16", "trainer.alpha=0.03", "card_alpha=0.06", "card_name=strong",
                         f"out_dir={tmp_path / 'o'}")
    assert code == 0, err
    (card_path,) = (tmp_path / "o").rglob("strong.yaml")
    model = load_card(card_path)
    assert model.alpha == 0.06 and model.card["training"]["trainer"]["alpha"] == 0.03
    reference = MNIST5k(seed=0).load().reference[:16]
    assert evaluate(model, reference)["psnr"] == pytest.approx(model.card["metrics"]["psnr"], abs=1e-6)
    model.alpha = 0.03                   # the metrics were measured at the stronger residual
    assert evaluate(model, reference)["psnr"] > model.card["metrics"]["psnr"] + 3


def test_invalid_card_alpha_fails_before_training(cli, tmp_path):
    code, out, err = cli("train-watermark", "trainer.steps=10", "card_alpha=-1", f"out_dir={tmp_path / 'o'}")
    assert code == 2 and "card_alpha=-1" in err and "must be a positive strength" in err
    assert not list((tmp_path / "o").rglob("checkpoints"))


#: a tiny run: 8 steps of global batches of 16 (split 8 / 8 under torchrun), validation and a
#: checkpoint at step 4, the three curriculum phases (attacks jpeg, noise, blur from step 2)
TINY = ["trainer.steps=8", "trainer.batch_size=16", "trainer.val_every=4",
        "trainer.checkpoint_every=4", "eval_images=32", "card_name=tiny"]


def torchrun(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, list]:
    """``madmark train-watermark *args`` on 2 gloo processes (see conftest.torchrun_madmark)."""
    return torchrun_madmark(root, "train-watermark", *args)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess, list]:
    """The TINY run under torchrun with the default time-stamped folder: (root, run folder,
    process, writes per rank)."""
    root = tmp_path_factory.mktemp("train_wm") / "ddp"
    done, writes = torchrun(root, *TINY, f"out_dir={root / 'outputs'}")
    runs = run_dirs(root)
    assert len(runs) == 1 and runs[0].parent == root / "outputs" / "train_watermark", runs
    return root, runs[0], done, writes


@pytest.mark.slow
def test_torchrun_train_watermark_writes_one_run_from_rank_0(ddp_run, cli, tmp_path):
    """``torchrun --nproc_per_node=2 -m madmark train-watermark``: one run folder with the card,
    checkpoints and metrics log, written by rank 0 alone (the audit hook of write_audit/); the
    weights are the single-process run's up to Adam's amplification of float rounding."""
    root, run, done, writes = ddp_run
    assert writes[1] == [], f"rank 1 wrote {writes[1][:5]}"
    written = {str(Path(p).resolve()) for _, p in writes[0]}
    assert str(run / "tiny.yaml") in written and str(run / "tiny.safetensors") in written
    assert list((root / "cwd").iterdir()) == []        # no Hydra output folder, log or .hydra/
    assert done.stdout.count("held-out:") == 1         # printed by rank 0 alone
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    rows = [json.loads(line) for line in open(run / "checkpoints" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [4, 8]
    assert latest_checkpoint(str(run / "checkpoints")).endswith("step_0000008")
    code, _, err = cli("train-watermark", *TINY, f"hydra.run.dir={tmp_path / 'single'}")
    assert code == 0, err
    one = load_card(tmp_path / "single" / "tiny.yaml").state_dict()
    two = load_card(run / "tiny.yaml").state_dict()
    assert one.keys() == two.keys()
    # the same global batches, messages and attack draws; Adam turns the rounding of the 2-rank
    # gradient sum into small weight differences (measured: 3e-5 after 8 steps at lr 1e-3; each
    # Adam step moves a weight by up to lr). The exact equality is tests/loops/test_distributed.py's.
    assert max((one[k] - two[k]).abs().max().item() for k in one) <= 1e-3


@pytest.mark.slow
def test_torchrun_train_watermark_resumes_exactly(ddp_run, tmp_path):
    """The run stopped after its step-4 checkpoint (later checkpoint, log rows and card gone) and
    resumed under torchrun ends with the uninterrupted torchrun run's weights, bit for bit; both
    ranks read the checkpoint, rank 0 alone writes."""
    _, uninterrupted, _, _ = ddp_run
    root = tmp_path / "ddp"
    run = root / "run"
    shutil.copytree(uninterrupted, run)
    shutil.rmtree(run / "checkpoints" / "step_0000008")
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"step": 4, "dir": "step_0000004"}))
    for name in ("tiny.yaml", "tiny.safetensors"):
        (run / name).unlink()
    done, writes = torchrun(root, f"resume={run}")
    assert writes[1] == [], f"rank 1 wrote {writes[1][:5]}"
    assert run_dirs(root) == [run] and done.stdout.count("held-out:") == 1
    rows = [json.loads(line) for line in open(run / "checkpoints" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [4, 8]
    a = load_card(uninterrupted / "tiny.yaml").state_dict()
    b = load_card(run / "tiny.yaml").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_trainer_setting_comes_from_the_config(cli, tmp_path):
    """Settings the command used to leave at code defaults (here max_chain, quality_weight,
    msg_dim, val_images) are config keys, recorded in the card, and reach the model."""
    code, _, err = cli("train-watermark", "trainer.steps=2", "trainer.val_every=0",
                       "trainer.checkpoint_every=0", "eval_images=8", "card_name=set",
                       "trainer.max_chain=2", "trainer.quality_weight=0.5", "trainer.msg_dim=8",
                       "trainer.val_images=8", f"out_dir={tmp_path / 'o'}")
    assert code == 0, err
    (card_path,) = (tmp_path / "o").rglob("set.yaml")
    model = load_card(card_path)
    recorded = model.card["training"]["trainer"]
    assert (recorded["max_chain"], recorded["quality_weight"], recorded["msg_dim"]) == (2, 0.5, 8)
    assert model.card["architecture"]["msg_dim"] == 8
    code, _, err = cli("train-watermark", "trainer.steps=abc", f"out_dir={tmp_path / 'p'}")
    assert code == 2 and "trainer.steps='abc' is not an integer — set trainer.steps=2000" in err
    assert err.count("\n") == 1 and not (tmp_path / "p").exists()
