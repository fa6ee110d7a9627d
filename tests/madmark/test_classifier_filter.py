"""``madmark run filter=classifier``: a learned real-vs-synthetic detector as the loop's filter —
the watermark filter's columns and its own, the generation-1 pass-through, the false-positive
rate on the pool's real samples against the law of a calibrated threshold, held-out draws in the
checkpoints and on resume, and its errors. Small MNIST loops (300 digits, no feature metrics)."""
import json

import pytest
from omegaconf import OmegaConf
from scipy.stats import betabinom

from eval.detectors import conformal_rank
from loops.checkpoint import Checkpoints
from loops.stages import FILTER_COLUMNS
from madcore.columns import names
from madmark.classifier_filter import COLUMNS
from madmark.rundir import read_csv
from tests.madmark.conftest import REPO, preempt_after_generation, run_dirs
from tests.madmark.test_autophagy import TINY

CLASSIFIER = ["filter=classifier", "filter.n_draw=300", *TINY]
#: the fresh-data run (shared with test_columns.py through the shared_run fixture)
FRESH_CLASSIFIER = ("loop=fresh_data", "loop.generations=3", *CLASSIFIER)


def only_run(root):
    (run,) = run_dirs(root)
    return run


def test_fresh_data_loop_with_the_classifier_filter(shared_run):
    run, _ = shared_run(*FRESH_CLASSIFIER)
    rows = read_csv(run / "results.csv")
    header = list(rows[0])
    filter_columns = [*names(FILTER_COLUMNS), *names(COLUMNS)]
    start = header.index("filter_n_in")
    assert header[start:start + len(filter_columns)] == filter_columns    # side by side, in order
    assert "wm_method" not in header                                     # no watermark needed
    first, later = rows[0], rows[1:]
    # generation 1: no synthetic sample exists yet; every pool sample is kept
    assert first["filter_trained"] == "False" and first["detector_train_from"] == ""
    assert first["filter_n_in"] == first["n_pool"] == "300" and first["filter_real_dropped"] == "0"
    assert first["detector_train_n_synth"] == "0" and first["filter_tpr"] == "nan"
    n_calib, alpha = 500, 0.01                # half of mnist5k's 1,000 reference digits
    k = conformal_rank(n_calib, alpha)
    # real pool samples flagged: BetaBinomial(300, n + 1 - k, k) for a calibrated threshold
    most_real_dropped = betabinom(300, n_calib + 1 - k, k).ppf(0.999)
    for t, row in enumerate(later, start=2):
        assert row["filter_trained"] == "True" and row["filter_kind"] == "cnn"
        assert row["detector_train_from"] == f"g{t - 1}"
        assert (row["detector_train_n_real"], row["detector_train_n_synth"]) == ("500", "300")
        assert row["detector_calib_n"] == "500"
        assert float(row["detector_calib_fpr"]) == pytest.approx((n_calib - k) / n_calib)
        assert float(row["detector_train_acc"]) > 0.95         # at the calibrated threshold
        assert row["filter_n_in"] == "600"
        assert int(row["filter_synth_caught"]) + int(row["filter_synth_missed"]) == 300
        assert float(row["filter_tpr"]) > 0.95         # PCA + GMM digits are easy to tell apart
        assert int(row["filter_real_dropped"]) <= most_real_dropped
        assert int(row["n_pool"]) == 600 - int(row["filter_real_dropped"]) - int(
            row["filter_synth_caught"])
    ckpt = Checkpoints(run / "state")
    for t in (1, 2):                           # the held-out draws, stored for a resumed run
        assert tuple(ckpt.load(t)["filter_train"].shape) == (300, 1, 28, 28)
    assert "filter_train" not in ckpt.load(3)  # no generation trains on the last one's
    assert "filter_tpr" in (run / "report.md").read_text()


def test_classifier_filter_beside_a_watermark(cli, tmp_path):
    code, _, err = cli("run", "loop=synthetic_augmentation", "watermark=spread_spectrum",
                       "loop.generations=2", *CLASSIFIER)
    assert code == 0, err
    row = read_csv(only_run(tmp_path / "outputs") / "results.csv")[1]
    assert row["wm_method"] == "spread_spectrum" and row["filter_kind"] == "cnn"
    assert row["filter_marked_n"] == "300"     # measured against provenance, never shown to it
    assert float(row["filter_tpr"]) > 0.9


def test_probe_on_frozen_random_cnn_features(cli, tmp_path):
    code, _, err = cli("run", "loop=fresh_data", "loop.generations=2", *CLASSIFIER,
                       "filter.kind=probe", "filter.n_draw=200")
    assert code == 0, err
    row = read_csv(only_run(tmp_path / "outputs") / "results.csv")[1]
    assert row["filter_kind"] == "probe" and row["filter_detector"].startswith("probe(random_cnn(")
    assert row["detector_train_n_synth"] == "200" and float(row["filter_tpr"]) > 0.9


def test_too_few_synthetic_samples_stop_the_run_and_keep_generation_1(cli, tmp_path):
    code, _, err = cli("run", "loop=fresh_data", "loop.generations=3", *CLASSIFIER,
                       "filter.n_draw=20", "filter.min_train=50")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "generation 2: the classifier filter has 20 synthetic samples" in err
    assert "fewer than filter.min_train=50" in err and "set filter.n_draw to at least 50" in err
    run = only_run(tmp_path / "outputs")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["generations_done"] == 1
    assert Checkpoints(run / "state").finished() == [1]


@pytest.mark.parametrize("overrides, message", [
    (["filter.kind=svm"], "filter.kind=svm is not one of cnn, probe"),
    (["filter.train_on=last"], "filter.train_on=last is not one of previous, all"),
    (["filter.alpha=0.001"], "needs at least 999 calibration images"),
    (["filter.calib_fraction=1.0"], "filter.calib_fraction=1.0 is outside (0, 1)"),
    (["filter.method=magic"], "filter.method=magic is not one of watermark, classifier"),
])
def test_bad_classifier_settings_stop_before_a_run_directory(cli, tmp_path, overrides, message):
    code, _, err = cli("run", "loop=fresh_data", "loop.generations=2", *CLASSIFIER, *overrides)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert run_dirs(tmp_path / "outputs") == []


def test_cnn_detector_on_vector_data_is_a_config_error(cli, tmp_path):
    code, _, err = cli("run", "data=gaussian", "model=gaussian", "filter=classifier",
                       "loop=fresh_data", "loop.generations=2", "progress=false")
    assert code == 2 and "filter.kind=cnn needs image data" in err


def test_resumed_run_trains_on_the_checkpointed_draws(cli, tmp_path, monkeypatch):
    args = ["loop=fresh_data", "loop.generations=2", *CLASSIFIER, "filter.cnn.epochs=2"]
    code, _, err = cli("run", *args, "name=full")
    assert code == 0, err
    with monkeypatch.context() as m:
        preempt_after_generation(m, 1)              # generation 1 checkpointed with its draw
        assert cli("run", *args, "name=cut")[0] == -1
    cut = only_run(tmp_path / "outputs" / "cut")
    code, _, err = cli("run", f"resume={cut}", "progress=false")
    assert code == 0, err
    full = read_csv(only_run(tmp_path / "outputs" / "full") / "results.csv")
    assert read_csv(cut / "results.csv") == full


def test_config_file_repeats_the_detector_defaults():
    """configs/filter/classifier.yaml documents the dataclass defaults (eval.detectors)."""
    from dataclasses import asdict

    from eval.detectors import CNNDetectorConfig, ProbeDetectorConfig

    cfg = OmegaConf.load(REPO / "configs" / "filter" / "classifier.yaml")
    assert OmegaConf.to_container(cfg.cnn) == asdict(CNNDetectorConfig())
    assert OmegaConf.to_container(cfg.probe) == asdict(ProbeDetectorConfig())


def test_a_missing_draw_names_the_generation_to_recompute():
    """A checkpoint without its held-out draw (e.g. written before the draws existed)."""
    import torch

    from eval.detectors import CNNDetector
    from loops.errors import LoopError
    from madmark.classifier_filter import ClassifierFilter

    f = ClassifierFilter(CNNDetector, "cnn", torch.zeros(300, 1, 4, 4), 150, 0.01, 100, 50,
                         "previous", 0, torch.device("cpu"))
    f.remember(1, torch.zeros(100, 1, 4, 4))
    x, which = f.training_set(2)
    assert len(x) == 100 and which == "g1"
    with pytest.raises(LoopError, match="no held-out draw of generation 2") as error:
        f.training_set(3)
    assert "resume_from=2" in str(error.value)


@pytest.mark.slow        # three runs, ~1-3 min on 2 cores
def test_the_filter_comparison_preset_runs_each_arm(cli, tmp_path):
    """experiment=filter_comparison: no filter, the watermark filter and the classifier filter
    write the same filter columns (and CAS) side by side."""
    tiny = ["loop.generations=2", "loop.n_real=300", "loop.n_synthetic=300",
            "model.n_components=16", "model.gmm_components=4", "eval.n_real=300",
            "eval.kid=false", "progress=false", "samples_grid=0"]
    code, _, err = cli("run", "-m", "experiment=filter_comparison",
                       "arm=control,watermark_filter,classifier_filter", "loop=fresh_data",
                       *tiny)
    assert code == 0, err
    (sweep,) = (tmp_path / "outputs" / "filter_comparison").iterdir()
    rows = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        cfg = (job / "config.yaml").read_text()
        rows[job.name] = (cfg, read_csv(job / "results.csv"))
    assert len(rows) == 3
    kinds = set()
    for cfg, (first, second) in rows.values():
        assert 0 <= float(second["cas"]) <= 1
        if "filter_tpr" in second:
            kinds.add(second.get("filter_kind", "watermark"))
            assert float(second["filter_tpr"]) > 0.9          # both filters catch S_1's samples
    assert len(kinds) == 2


@pytest.mark.slow        # 8 detectors trained and calibrated, ~30 s on 2 cores
def test_real_drop_rate_over_calibration_sets_averages_to_alpha():
    """The filter_comparison sweep dropped 0.8-2.2 % of the pool's real digits at α = 0.01 (one
    seed: one 500-image calibration set shared by every generation and both loops). Over
    independent calibration sets (seeds) the rate on 4,000 real digits the detector never saw
    averages to α: the excess of one run is the Beta(n + 1 − k, k) spread of a conditional FPR,
    not a bias."""
    import statistics

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import configs  # noqa: F401  (registers the schemas the yamls start from)
    from madcore.rng import generator
    from madmark.classifier_filter import build_classifier_filter
    from madmark.data import MNIST5k

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("config", overrides=["loop=fresh_data", "filter=classifier"])
    splits = MNIST5k(seed=0, n_reference=1000).load()
    model = instantiate(cfg.model)
    model.fit(splits.train[:1000], generator(0, 1, "fit"))
    alpha, rates = float(cfg.filter.alpha), []
    for seed in range(8):
        f = build_classifier_filter(cfg.filter, splits, "mnist5k", seed, torch.device("cpu"))
        f.remember(1, model.sample(int(cfg.filter.n_draw),
                                   generator=generator(seed, 1, "filter-train")))
        rates.append(float(f.flag(2, splits.train).double().mean()))
    n_calib = int(round(float(cfg.filter.calib_fraction) * 1000))
    k = conformal_rank(n_calib, alpha)
    mean = statistics.mean(rates)
    # per seed: Beta(n + 1 - k, k) conditional rate plus binomial noise on 4,000 digits
    a, b = n_calib + 1 - k, k
    sd = (a * b / ((a + b) ** 2 * (a + b + 1)) + alpha / 4000) ** 0.5
    assert mean <= (n_calib + 1 - k) / (n_calib + 1) + 3 * sd / len(rates) ** 0.5, rates
    assert min(rates) > 0                               # the threshold is not degenerate
