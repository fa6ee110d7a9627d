"""madmark run with the watermark and filter stages: presets, columns, errors, key secrecy,
radioactivity. Small MNIST loops (300 digits, no feature metrics) keep these fast."""
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from loops.checkpoint import Checkpoints
from madmark.data import MNIST5k
from madmark.rundir import read_csv
from madmark.watermarking import RunWatermark
from tests.madmark.conftest import copy_run, run_dirs

TINY = ["loop.n_real=300", "loop.n_synthetic=300", "eval.enabled=false", "progress=false",
        "model.n_components=16", "model.gmm_components=4",
        "samples_grid=0"]
SECRET = "correct-horse-battery-staple-7f3a"
#: runs that several tests here and in test_columns.py read (the shared_run fixture runs each once)
WATERMARK = ("watermark=spread_spectrum", "loop.generations=3", *TINY)
CONTROL = ("watermark=spread_spectrum", "arm=control", "loop.generations=2", *TINY)
FILTER = ("loop=synthetic_augmentation", "watermark=spread_spectrum", "filter=detector",
          "loop.generations=3", *TINY)


def only_run(root):
    (run,) = run_dirs(root)
    return run


@pytest.mark.parametrize("experiment", [
    "mad_fully_synthetic", "mad_synthetic_augmentation", "mad_fresh_data",
    "autophagy_fully_synthetic", "autophagy_synthetic_augmentation", "autophagy_fresh_data",
    "autophagy_robustness"])
def test_presets_compose_and_run(cli, tmp_path, experiment):
    code, _, err = cli("run", f"experiment={experiment}", "loop.generations=2", *TINY)
    assert code == 0, err
    rows = read_csv(only_run(tmp_path / "outputs" / experiment) / "results.csv")
    assert len(rows) == 2
    if experiment.startswith("autophagy"):
        assert rows[0]["wm_method"] == "spread_spectrum"
        assert int(rows[1]["n_marked"]) == 300                  # marked by default, not filtered
        assert float(rows[0]["inherit_bit_acc"]) < 0.6          # generation 1 never saw a mark


def test_watermark_loop_writes_marks_inheritance_and_artifacts(shared_run):
    run, _ = shared_run(*WATERMARK)
    rows = read_csv(run / "results.csv")
    assert [int(r["n_marked"]) for r in rows] == [0, 300, 300]
    assert all(float(r["wm_psnr"]) > 35 for r in rows)
    # the model trained on marked samples reproduces the mark in its own, unmarked samples
    assert float(rows[0]["inherit_detect_rate"]) < 0.05
    assert float(rows[1]["inherit_detect_rate"]) > 0.9
    assert float(rows[2]["artifact_energy"]) > float(rows[1]["artifact_energy"])
    assert rows[0]["growth_baseline"] == "2" and float(rows[1]["artifact_energy_growth"]) == 1.0
    assert (run / "plots" / "artifacts.png").is_file()
    assert "inherit_detect_rate" in (run / "report.md").read_text()


def test_control_arm_measures_without_marking(shared_run):
    run, _ = shared_run(*CONTROL)
    rows = read_csv(run / "results.csv")
    assert [r["n_marked"] for r in rows] == ["0", "0"] and "wm_psnr" not in rows[0]
    assert all(float(r["inherit_detect_rate"]) < 0.05 for r in rows)


def test_filter_drops_marked_samples_and_few_real_ones(shared_run):
    run, _ = shared_run(*FILTER)
    rows = read_csv(run / "results.csv")
    for row in rows[1:]:
        assert float(row["filter_tpr"]) >= 0.95
        assert int(row["filter_synth_caught"]) + int(row["filter_synth_missed"]) == 300
        assert float(row["real_fraction"]) > 0.95
    assert all(float(r["filter_real_drop_rate"]) <= 0.05 for r in rows)


def test_fully_synthetic_with_filter_stops_with_a_clear_error_and_keeps_generation_1(cli, tmp_path):
    code, _, err = cli("run", "watermark=spread_spectrum", "filter=detector", "loop.generations=3",
                       *TINY)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "too few to fit" in err and "loop=synthetic_augmentation" in err
    run = only_run(tmp_path / "outputs")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["generations_done"] == 1
    assert (run / "state" / "g0001.pt").is_file()


def test_filter_without_watermark_is_a_config_error(cli, tmp_path):
    code, _, err = cli("run", "filter=detector", "loop.generations=2", *TINY)
    assert code == 2 and "needs a watermark" in err


def test_watermark_on_vector_data_is_a_config_error(cli):
    code, _, err = cli("run", "data=gaussian", "model=gaussian", "watermark=spread_spectrum",
                       "loop.generations=2", "progress=false")
    assert code == 2 and "needs image data" in err


def test_secret_key_never_reaches_the_run_directory(cli, tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_text(SECRET + "\n")
    code, out, err = cli("run", "watermark=spread_spectrum", f"watermark.key_file={key_file}",
                         "loop.generations=2", *TINY)
    assert code == 0, err
    assert SECRET not in out + err
    run = only_run(tmp_path / "outputs")
    files = [p for p in run.rglob("*") if p.is_file()]
    assert len(files) > 5
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    rows = read_csv(run / "results.csv")
    assert rows[0]["wm_key"] == "file" and float(rows[1]["inherit_detect_rate"]) > 0.9
    # a different key is not detected in the same run's samples: the key matters
    code, out, err = cli("radioactivity", str(run), "n=500", f"key_file={key_file}")
    assert code == 0 and "FLAGGED" in out and SECRET not in out + err
    other = tmp_path / "other.txt"
    other.write_text("another key")
    code, _, err = cli("radioactivity", str(run), "n=500", f"key_file={other}", "seed=1")
    assert code == 2 and "marked with key" in err and "pass key_file=" in err
    assert not (run / "radioactivity" / "g0002_n500_seed1.json").exists()
    code, out, _ = cli("radioactivity", str(run), "n=500", f"key_file={other}", "seed=1",
                       "other_key=true")
    assert code == 0 and "not flagged" in out


def test_radioactivity_flags_a_model_trained_on_marked_data(cli, tmp_path, shared_run):
    run = copy_run(shared_run(*WATERMARK)[0], tmp_path)      # radioactivity writes into the run
    code, out, err = cli("radioactivity", str(run / "state" / "g0002.pt"), "n=400")
    assert code == 0, err
    (record_path,) = (run / "radioactivity").glob("g0002_*.json")
    record = json.loads(record_path.read_text())
    assert record["flagged"] and record["p_value"] <= 2.0 ** -32 * 1.0001 and record["clean_generation"] == 1
    code, _, err = cli("radioactivity", str(run / "state" / "g0002.pt"), "n=400")
    assert code == 2 and "already exists" in err                  # nothing is overwritten
    code, _, err = cli("radioactivity", str(run), "generation=1")
    assert code == 2 and "test a generation after the clean one" in err


@pytest.mark.slow
def test_radioactivity_does_not_flag_models_trained_on_clean_data(cli, tmp_path):
    """Control arm (nothing marked) over several seeds and generations: no flag at α = 0.01."""
    p_values = []
    for seed in range(4):
        code, _, err = cli("run", "watermark=spread_spectrum", "arm=control", f"seed={seed}",
                           "loop.generations=3", "name=clean", *TINY)
        assert code == 0, err
    for run in run_dirs(tmp_path / "outputs" / "clean"):
        for generation in (2, 3):
            code, out, err = cli("radioactivity", str(run), f"generation={generation}", "n=1000")
            assert code == 0, err
            assert "not flagged" in out, out
            (path,) = (run / "radioactivity").glob(f"g{generation:04d}_*.json")
            p_values.append(json.loads(path.read_text())["p_value"])
    assert len(p_values) == 8 and all(p > 0.01 for p in p_values)
    assert not all(math.isclose(p, p_values[0]) for p in p_values)


def test_per_generation_keys_mark_detect_and_filter(cli, tmp_path):
    """key_mode=generation: S_t carries key t; the filter tests every key used so far
    (Bonferroni) and inheritance is measured against the key of generation t − 1."""
    code, _, err = cli("run", "loop=synthetic_augmentation", "watermark=spread_spectrum",
                       "watermark.key_mode=generation", "arm=watermark_filter",
                       "loop.generations=3", *TINY)
    assert code == 0, err
    run = only_run(tmp_path / "outputs")
    rows = read_csv(run / "results.csv")
    assert rows[0]["wm_key_mode"] == "generation"
    for row in rows[1:]:                     # pools hold S_{t-1} marked with key t − 1: all caught
        assert float(row["filter_tpr"]) >= 0.95
    cfg = OmegaConf.load(run / "config.yaml")
    clean = MNIST5k(seed=0).load().reference[:300]
    pooled = Checkpoints(run / "state").load(2)["samples"]          # S_2 as it entered pool 3
    wm = RunWatermark(cfg.watermark, int(cfg.seed), (1, 28, 28), clean, torch.device("cpu"))
    own = wm.detector(2).detect(pooled).flagged.float().mean()
    other = wm.detector(1).detect(pooled).flagged.float().mean()
    assert own > 0.95 and other < 0.1            # generation 2's samples carry key 2, not key 1


def test_generation_keys_columns_count_the_layers_of_every_earlier_key():
    """artifact_energy_all_keys at generation 3 (keys 1 and 2): ~1 layer for digits marked with
    key 2 alone, ~0 for clean held-out digits, more than one for digits marked with key 1 and
    then key 2 (less than two: key 2's informed embedding cancels part of key 1's layer)."""
    cfg = OmegaConf.merge(OmegaConf.load("configs/watermark/base.yaml"),
                          {"method": "spread_spectrum_aware", "key_mode": "generation"})
    digits = MNIST5k(seed=0).load()
    reference, held_out = digits.reference[:500], digits.reference[500:]
    wm = RunWatermark(cfg, 0, (1, 28, 28), reference, torch.device("cpu"))
    evaluate = wm.artifact_evaluator(digits.train, reference)
    key2 = wm.mark(2, held_out)
    rows = {"clean": evaluate(3, held_out, None), "key2": evaluate(3, key2, None),
            "both": evaluate(3, wm.mark(2, wm.mark(1, held_out)), None)}
    assert all(r["artifact_keys"] == 2 for r in rows.values())
    se = rows["clean"]["artifact_energy_all_keys_se"]
    assert 0 < se < 0.15
    assert abs(rows["clean"]["artifact_energy_all_keys"]) < 3 * se
    assert rows["key2"]["artifact_energy_all_keys"] == pytest.approx(1.0, abs=3 * se)
    assert 1.0 + 3 * se < rows["both"]["artifact_energy_all_keys"] < 2.0
    assert evaluate(2, held_out, None)["artifact_keys"] == 1


def test_message_mode_keeps_one_carrier_set_and_the_aware_mark_rewrites_instead_of_stacking():
    """key_mode=message: every generation marks its own message on the run key's carriers; the
    aware embedding of message 2 over message 1 flips the differing bits, so the digits carry
    about one layer in all (key_mode=generation would stack a second: see the test above)."""
    cfg = OmegaConf.merge(OmegaConf.load("configs/watermark/base.yaml"),
                          {"method": "spread_spectrum_aware", "key_mode": "message"})
    digits = MNIST5k(seed=0).load()
    reference, held_out = digits.reference[:500], digits.reference[500:]
    wm = RunWatermark(cfg, 0, (1, 28, 28), reference, torch.device("cpu"))
    assert wm.method(1) is wm.method(5)                       # one carrier set
    assert not torch.equal(wm.message(1), wm.message(2))      # a message per generation
    rewritten = wm.mark(2, wm.mark(1, held_out))
    assert wm.detector(2).detect(rewritten).flagged.float().mean() > 0.99
    assert wm.detector(1).detect(rewritten).flagged.float().mean() < 0.05
    row = wm.artifact_evaluator(digits.train, reference)(3, rewritten, None)
    se = row["artifact_energy_all_keys_se"]
    assert row["artifact_energy_all_keys"] == pytest.approx(1.0, abs=3 * se + 0.1)
