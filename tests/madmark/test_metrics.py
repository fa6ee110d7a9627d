"""Per-generation metrics of a run: wiring to eval/, extractor choice, and MAD on the default run."""
import pytest
import torch
from omegaconf import OmegaConf

from eval.fid import fid
from eval.prdc import prdc
from madmark.data import Digits, Gaussian
from madcore.errors import MadmarkError
from madmark.metrics import GenerationMetrics, choose_extractor, make_extractor
from madmark.rundir import read_csv
from tests.madmark.conftest import run_dirs


def eval_cfg(tmp_path, **features):
    base = OmegaConf.load("configs/eval/default.yaml")
    base.features.seed = 0
    base.features.cache_dir = str(tmp_path / "cache")
    base.features.update(features)
    base.kid_subset_size = 100
    return base


def test_metrics_equal_direct_calls_on_the_same_features(tmp_path):
    splits = Digits(seed=0).load()
    cfg = eval_cfg(tmp_path, name="random_cnn")
    extractor = make_extractor(cfg, splits, "digits", torch.device("cpu"))
    metrics = GenerationMetrics(cfg, extractor, splits.reference, seed=0, device=torch.device("cpu"))
    fake = splits.train[:500].flip(-1)                         # mirrored digits: a shifted set
    row = metrics(1, fake)
    real_f, fake_f = extractor.extract(splits.reference), extractor.extract(fake)
    expected = prdc(real_f, fake_f, k=5)
    for key in expected:
        assert row[key] == pytest.approx(expected[key], abs=1e-12), key
    assert row["fid"] == pytest.approx(fid(real_f, fake_f), rel=1e-9)
    assert (row["n_real_eval"], row["n_fake_eval"], row["k"]) == (297, 500, 5)
    assert row["features"].startswith("random_cnn")


def test_auto_features():
    digits, gaussian = Digits(seed=0).load(), Gaussian(seed=0, dim=3).load()
    assert choose_extractor("auto", digits) == "lenet"
    assert choose_extractor("auto", gaussian) == "raw"
    assert choose_extractor("random_cnn", digits) == "random_cnn"


def test_inception_offline_names_the_config_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))      # no cached weights
    cfg = eval_cfg(tmp_path, name="inception")
    with pytest.raises(MadmarkError, match="eval.features.weights_path"):
        make_extractor(cfg, Digits(seed=0).load(), "digits", torch.device("cpu"))


def test_lenet_is_cached_and_reports_held_out_accuracy(tmp_path):
    splits = Digits(seed=0).load()
    cfg = eval_cfg(tmp_path, name="lenet", epochs=3)
    first = make_extractor(cfg, splits, "digits", torch.device("cpu"))
    second = make_extractor(cfg, splits, "digits", torch.device("cpu"))
    assert "acc=" in first.describe() and first.describe() == second.describe()
    x = splits.reference[:64]
    assert torch.equal(first.extract(x), second.extract(x))
    assert len(list((tmp_path / "cache").iterdir())) == 1


@pytest.mark.slow
def test_default_run_shows_mad(cli, tmp_path):
    """The default experiment (fully synthetic, mnist5k, PCA+GMM): recall and coverage fall,
    FID rises, precision holds; with λ = 0.8 precision holds while recall falls faster."""
    args = ["loop.generations=5", "progress=false", f"eval.features.cache_dir={tmp_path / 'c'}"]
    assert cli("run", *args, "name=unbiased")[0] == 0
    assert cli("run", *args, "name=biased", "loop.bias=0.8")[0] == 0
    (unbiased,) = run_dirs(tmp_path / "outputs" / "unbiased")
    (biased,) = run_dirs(tmp_path / "outputs" / "biased")
    u = read_csv(unbiased / "results.csv")
    b = read_csv(biased / "results.csv")
    col = lambda rows, k: [float(r[k]) for r in rows]
    assert col(u, "recall")[-1] < 0.5 * col(u, "recall")[0]
    assert col(u, "coverage")[-1] < col(u, "coverage")[0]
    assert col(u, "fid")[-1] > col(u, "fid")[0]
    assert min(col(u, "precision")) > 0.95
    assert min(col(b, "precision")) > 0.95
    assert col(b, "recall")[-1] < col(u, "recall")[-1]
