"""The science the autophagy experiments must show, on real MNIST digits (slow: a few minutes).

Each test runs real loops through the CLI (PCA-64 + GMM-20, LeNet features, k = 5) and checks the
direction and size of the effect with margins well outside seed-to-seed noise.
"""
import pytest

from madmark.rundir import read_csv
from tests.madmark.conftest import run_dirs

pytestmark = pytest.mark.slow

COMMON = ["progress=false", "samples_grid=0", "eval.kid=false"]


def run(cli, tmp_path, name, *overrides):
    code, _, err = cli("run", f"name={name}", *COMMON, *overrides)
    assert code == 0, err
    (path,) = run_dirs(tmp_path / "outputs" / name)
    return read_csv(path / "results.csv")


def col(rows, name):
    return [float(r[name]) for r in rows]


def mean(values):
    return sum(values) / len(values)

# Generation-to-generation noise: with a fresh 2,000-digit draw and a new GMM fit each generation,
# recall moves by up to ±0.08 around its level (k = 5, N_real = 1,000), so stability is judged on
# the mean of the later generations, and single generations only against a wide band.


def test_fully_synthetic_loop_with_bias_loses_recall_and_keeps_precision(cli, tmp_path):
    rows = run(cli, tmp_path, "biased", "loop.generations=5", "loop.n_real=1000", "loop.bias=0.7")
    precision, recall = col(rows, "precision"), col(rows, "recall")
    assert recall[-1] < recall[0] - 0.2, recall
    assert precision[-1] >= precision[0] - 0.02, precision


def test_fresh_data_loop_with_a_large_real_fraction_is_stable(cli, tmp_path):
    rows = run(cli, tmp_path, "fresh", "loop=fresh_data", "loop.generations=5",
               "loop.n_real=2000", "loop.n_synthetic=500")
    precision, recall = col(rows, "precision"), col(rows, "recall")
    assert abs(mean(precision[1:]) - precision[0]) <= 0.02, precision
    assert abs(mean(recall[1:]) - recall[0]) <= 0.05, recall
    assert all(abs(r - recall[0]) <= 0.12 for r in recall), recall


def test_marked_fully_synthetic_loop_accumulates_watermark_artifacts(cli, tmp_path):
    base = ["watermark=spread_spectrum", "loop.generations=5", "loop.n_real=1000", "eval.enabled=false"]
    marked = run(cli, tmp_path, "marked", *base)
    control = run(cli, tmp_path, "control", *base, "arm=control")
    energy, control_energy = col(marked, "artifact_energy"), col(control, "artifact_energy")
    # every generation re-marks samples that already carry the inherited mark: one more layer each
    steps = [b - a for a, b in zip(energy[1:], energy[2:])]
    assert all(s > 0.5 for s in steps), energy
    assert col(marked, "artifact_energy_growth")[-1] > 1.8
    # the unmarked control loop drifts far less along the same pattern
    assert control_energy[-1] - control_energy[1] < 0.5 * (energy[-1] - energy[1]), control_energy
    assert min(col(marked, "inherit_detect_rate")[1:]) > 0.95
    assert max(col(control, "inherit_detect_rate")) < 0.05


@pytest.mark.parametrize("family, sizes", [
    ("synthetic_augmentation", ["loop.n_real=1000", "loop.n_synthetic=3000"]),
    ("fresh_data", ["loop.n_real=1000", "loop.n_synthetic=3000"]),
])
def test_filter_keeps_the_loop_near_its_real_only_baseline(cli, tmp_path, family, sizes):
    base = [f"loop={family}", "watermark=spread_spectrum", "loop.generations=5", *sizes]
    unfiltered = run(cli, tmp_path, "unfiltered", *base, "arm=watermark")
    filtered = run(cli, tmp_path, "filtered", *base, "arm=watermark_filter")
    # generation 1 trains on the real data alone: the real-only baseline of the loop
    r_unf, r_fil = col(unfiltered, "recall"), col(filtered, "recall")
    p_fil = col(filtered, "precision")
    assert mean(r_unf[2:]) < r_unf[0] - 0.08, r_unf
    assert abs(mean(r_fil[1:]) - r_fil[0]) <= 0.04, r_fil
    assert mean(r_fil[2:]) > mean(r_unf[2:]) + 0.05, (r_fil, r_unf)
    assert abs(mean(p_fil[1:]) - p_fil[0]) <= 0.02, p_fil
    assert min(col(filtered, "filter_tpr")[1:]) >= 0.98
    alpha = 0.01
    dropped = sum(int(r["filter_real_dropped"]) for r in filtered)
    seen = sum(int(r["filter_n_in"]) - int(r["filter_synth_caught"]) - int(r["filter_synth_missed"])
               for r in filtered)
    assert dropped / seen <= 1.5 * alpha, (dropped, seen)
