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


# ---- autophagy-aware training: trainer.idempotence_weight, trainer.regeneration_prob ------------
#: a VAE that fits in a second or two (the real one: configs/model/vae.yaml, ~1 min on mnist5k)
TINY_VAE = ["regeneration.vae.epochs=1", "regeneration.vae.width=4", "regeneration.vae.latent_dim=4",
            "regeneration.vae.prior=normal"]


@pytest.mark.parametrize("args, message", [
    (["trainer.idempotence_weight=-1"],
     "trainer.idempotence_weight=-1.0 must be >= 0 — set e.g. trainer.idempotence_weight=1"),
    (["trainer.regeneration_prob=1.5"],
     "trainer.regeneration_prob=1.5 is not a probability — set a value in [0, 1]"),
    (["trainer.regeneration_prob=0.5"],
     "trainer.regeneration_prob=0.5 needs a regenerator — add regeneration=vae"),
    (["regeneration=vae", "regeneration.attack=regen_diffusion", "trainer.regeneration_prob=0.5"],
     "regeneration.attack=regen_diffusion cannot be trained through — use regeneration=vae"),
    (["regeneration=gan"], "unknown regeneration 'gan' — choose regeneration= one of vae"),
    (["data=gaussian", "regeneration=vae", "trainer.regeneration_prob=0.5"],
     "train-watermark needs image data"),
])
def test_bad_autophagy_aware_settings_fail_in_one_line_before_training(cli, tmp_path, args, message):
    vae = [*TINY_VAE, f"regeneration.cache_dir={tmp_path / 'cache'}"] if "regeneration=vae" in args else []
    code, _, err = cli("train-watermark", "trainer.steps=4", *args, *vae, f"out_dir={tmp_path / 'o'}")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not list((tmp_path / "o").rglob("checkpoints")) and not (tmp_path / "cache").exists()


def test_regeneration_and_idempotence_train_and_are_measured_on_the_card(cli, tmp_path):
    """regeneration=vae fits the (tiny) VAE on the clean train split into the cache, trains through
    it, and the card records the settings and adds idem_psnr_db and bit_acc_regen; with
    trainer.regeneration_prob=0 the VAE is neither fitted nor used."""
    cache = tmp_path / "cache"
    quick = ["trainer.steps=8", "trainer.batch_size=16", "trainer.val_every=0",
             "trainer.checkpoint_every=0", "trainer.warmup_frac=0.25", "eval_images=32"]
    code, out, err = cli("train-watermark", *quick, "card_name=tiny", "regeneration=vae", *TINY_VAE,
                         f"regeneration.cache_dir={cache}", "trainer.regeneration_prob=0.5",
                         "trainer.idempotence_weight=1", f"out_dir={tmp_path / 'o'}")
    assert code == 0, err
    (card_path,) = (tmp_path / "o").rglob("tiny.yaml")
    card = load_card(card_path).card
    assert card["training"]["regeneration"]["attack"] == "regen_vae"
    assert (card["training"]["trainer"]["regeneration_prob"],
            card["training"]["trainer"]["idempotence_weight"]) == (0.5, 1.0)
    assert {"idem_psnr_db", "bit_acc_regen"} <= set(card["metrics"])
    assert "second marking" in out and "after regeneration" in out
    assert len(list(cache.glob("regen_vae-*/model.safetensors"))) == 1
    code, out, err = cli("train-watermark", *quick, "regeneration=vae", f"regeneration.cache_dir={tmp_path / 'unused'}",
                         "card_name=off", f"out_dir={tmp_path / 'p'}")
    assert code == 0, err
    assert "regeneration is unused" in out and not (tmp_path / "unused").exists()
    (card_path,) = (tmp_path / "p").rglob("off.yaml")
    assert set(load_card(card_path).card["metrics"]) == {"bit_acc", "bit_acc_jpeg50", "psnr",
                                                         "n_eval_images", "eval_split"}


def test_aware_recipe_is_the_digits32_recipe_plus_the_aware_options():
    """recipe=digits32_aware composes to the shipped digits32 card's recorded settings, plus the
    idempotence weight, the regeneration probability and regeneration=vae, whose VAE is
    eval-watermark's regen_vae model on mnist5k (so both use one cache entry)."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.watermark.test_shipped_cards import recorded_training

    with initialize_config_module("configs", version_base=None):
        cfg = compose("train_watermark", overrides=["recipe=digits32_aware"])
        evaluation = compose("eval_watermark", overrides=["data=mnist5k"])
    composed = OmegaConf.to_container(cfg, resolve=True)
    trainer = instantiate(cfg.trainer, _convert_="all")
    assert (trainer.idempotence_weight, trainer.regeneration_prob) == (1.0, 0.25)
    assert composed["card_name"] == "digits32_aware"
    assert composed["regeneration"]["attack"] == "regen_vae"
    assert composed["regeneration"]["vae"] == OmegaConf.to_container(evaluation.regeneration.vae,
                                                                     resolve=True)
    assert composed["regeneration"]["cache_dir"] == evaluation.regeneration.cache_dir
    digits32 = {"card_alpha": None, **recorded_training("digits32")}   # card_alpha came later
    where = ("device", "threads", "out_dir", "name", "hydra", "debug", "resume", "card_name",
             "regeneration")
    aware = ("idempotence_weight", "regeneration_prob")
    strip = lambda c: {k: ({kk: vv for kk, vv in v.items() if kk not in aware}  # noqa: E731
                           if k == "trainer" else v) for k, v in c.items() if k not in where}
    assert strip(composed) == strip(digits32)
