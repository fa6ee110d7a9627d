"""Pool composition of the three loop families (MAD §2.2), replace and accumulate."""
import pytest
import torch

from loops.checkpoint import Checkpoints
from loops.engine import LoopEngine, LoopSettings
from loops.errors import LoopError
from loops.families import LoopFamily
from loops.models import GaussianModel
from loops.pool import Pool


def run_loop(source, tmp_path, family, history, generations=3, n_real=10, n_synthetic=7, bias=1.0):
    engine = LoopEngine(source=source, make_model=GaussianModel,
                        family=LoopFamily(family, history),
                        settings=LoopSettings(generations, n_real, n_synthetic, bias, seed=1),
                        checkpoints=Checkpoints(tmp_path / f"{family}-{history}"))
    return engine.run()


@pytest.mark.parametrize("family, history, expected", [
    ("fully_synthetic", "replace", ["g0=10", "g1=7", "g2=7"]),
    ("fully_synthetic", "accumulate", ["g0=10", "g1=7", "g1=7 g2=7"]),
    ("synthetic_augmentation", "replace", ["g0=10", "g0=10 g1=7", "g0=10 g2=7"]),
    ("synthetic_augmentation", "accumulate", ["g0=10", "g0=10 g1=7", "g0=10 g1=7 g2=7"]),
    ("fresh_data", "replace", ["g0=10", "g0=10 g1=7", "g0=10 g2=7"]),
    ("fresh_data", "accumulate", ["g0=10", "g0=10 g1=7", "g0=10 g1=7 g2=7"]),
])
def test_pool_composition_by_origin(normal_source, tmp_path, family, history, expected):
    rows = run_loop(normal_source, tmp_path, family, history)
    assert [r["origin_counts"] for r in rows] == expected
    assert rows[0]["real_fraction"] == 1.0          # generation 1 trains on real data only


def test_augmentation_reuses_one_real_set_and_fresh_draws_new_ones():
    real = Pool.real(torch.randn(4, 2))
    draws = {t: Pool.real(torch.full((4, 2), float(t))) for t in range(1, 4)}
    history = [Pool.synthetic(torch.randn(3, 2), 1), Pool.synthetic(torch.randn(3, 2), 2)]
    aug = LoopFamily("synthetic_augmentation").compose(3, real, draws.__getitem__, history)
    fresh = LoopFamily("fresh_data").compose(3, real, draws.__getitem__, history)
    assert torch.equal(aug.x[:4], real.x)
    assert torch.equal(fresh.x[:4], draws[3].x)
    assert torch.equal(aug.x[4:], history[1].x) and torch.equal(fresh.x[4:], history[1].x)


def test_fully_synthetic_pool_is_the_previous_samples(normal_source, tmp_path):
    ckpt = Checkpoints(tmp_path)
    engine = LoopEngine(normal_source, GaussianModel, LoopFamily("fully_synthetic"),
                        LoopSettings(3, 50, 40, 1.0, seed=0), ckpt)
    engine.run()
    s2 = ckpt.load(2)["samples"].double()
    mean3 = ckpt.load(3)["model"]["mean"]
    torch.testing.assert_close(mean3.double(), s2.mean(0))   # generation 3 fits S_2 exactly


@pytest.mark.parametrize("bias", [0.0, -0.5, 1.5])
def test_bias_outside_unit_interval_is_rejected(normal_source, tmp_path, bias):
    with pytest.raises(LoopError, match=r"\(0, 1\]"):
        run_loop(normal_source, tmp_path, "fully_synthetic", "replace", bias=bias)


@pytest.mark.parametrize("family", ["fully_synthetic", "synthetic_augmentation"])
def test_zero_synthetic_samples_rejected_where_needed(normal_source, tmp_path, family):
    with pytest.raises(LoopError, match="n_synthetic=0"):
        run_loop(normal_source, tmp_path, family, "replace", n_synthetic=0)


def test_fresh_data_without_synthetic_is_a_real_only_baseline(normal_source, tmp_path):
    rows = run_loop(normal_source, tmp_path, "fresh_data", "replace", n_synthetic=0)
    assert [r["origin_counts"] for r in rows] == ["g0=10"] * 3


@pytest.mark.parametrize("family, history", [("wrong", "replace"), ("fresh_data", "keep")])
def test_unknown_family_or_history(family, history):
    with pytest.raises(LoopError, match="unknown loop"):
        LoopFamily(family, history)
