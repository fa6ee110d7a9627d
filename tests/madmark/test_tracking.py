"""Experiment tracking (logger=tensorboard | mlflow): real runs through the CLI, read back with each
library's own reader and compared with results.csv value by value."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from madmark.rundir import read_csv
from madmark.tracking.base import flatten, split_row
from tests.madmark.conftest import FAST, preempt_after_generation, run_dirs

#: a tiny MNIST image run (PCA + GMM, no feature metrics) with a spread-spectrum watermark
IMAGES = ["loop.n_real=300", "loop.n_synthetic=300", "eval.enabled=false", "progress=false",
          "model.n_components=16", "model.gmm_components=4", "samples_grid=16",
          "loop.generations=2", "watermark=spread_spectrum"]
SECRET = "correct-horse-battery-staple-7f3a"


def only_run(root: Path) -> Path:
    """The one run directory under root (an experiment folder: MLflow's artifact store beside it
    holds config.yaml files too)."""
    (run,) = run_dirs(root)
    return run


def numeric_columns(run: Path) -> dict[str, dict[int, float]]:
    """{column: {generation: value}} of every column of results.csv whose cells are numbers;
    non-finite cells are left out (the loggers skip them: undefined)."""
    rows = read_csv(run / "results.csv")
    columns = {}
    for column in rows[0]:
        try:
            values = {int(r["generation"]): float(r[column]) for r in rows}
        except ValueError:
            continue
        columns[column] = {t: v for t, v in values.items() if math.isfinite(v)}
    return columns


def tensorboard_events(run: Path):
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = ea.EventAccumulator(str(run / "tensorboard"),
                                 size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    events.Reload()
    return events


def mlflow_run(run: Path):
    """(client, run id) from the run directory's tracking.json."""
    mlflow = pytest.importorskip("mlflow")
    record = json.loads((run / "tracking.json").read_text())
    return mlflow.MlflowClient(tracking_uri=record["tracking_uri"]), record["run_id"]


def logged_scalars(logger: str, run: Path) -> dict[str, list[tuple[int, float]]]:
    """{column: [(step, value), ...]} as the logger's own reader returns them, in logged order."""
    if logger == "tensorboard":
        events = tensorboard_events(run)
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
                for tag in events.Tags()["scalars"]}
    client, run_id = mlflow_run(run)
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
            for key in client.get_run(run_id).data.metrics}


def assert_matches_results(logger: str, run: Path) -> None:
    """Every numeric results.csv column is logged once per generation, with its value (TensorBoard
    keeps float32), and nothing else is logged as a scalar."""
    expected, logged = numeric_columns(run), logged_scalars(logger, run)
    assert set(logged) == {c for c, values in expected.items() if values}
    for column, values in expected.items():
        steps = [step for step, _ in logged.get(column, [])]
        assert steps == sorted(values), (column, steps)          # each generation once, in order
        for step, value in logged.get(column, []):
            if logger == "tensorboard":
                assert np.float32(value) == np.float32(values[step]), (column, step)
            else:
                assert value == values[step], (column, step)


# ---- what is logged --------------------------------------------------------------------------

@pytest.mark.parametrize("logger", ["tensorboard", "mlflow"])
def test_every_numeric_column_is_logged_per_generation(cli, tmp_path, logger):
    code, _, err = cli("run", *FAST, f"logger={logger}")
    assert code == 0, err
    run = only_run(tmp_path / "outputs" / "default")
    assert_matches_results(logger, run)
    assert json.loads((run / "tracking.json").read_text())["generations_logged"] == 3
    config = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    if logger == "tensorboard":
        events = tensorboard_events(run)
        (text,) = events.Tensors("config/text_summary")
        yaml = "\n".join(line[4:] for line in text.tensor_proto.string_val[0].decode().splitlines())
        assert text.step == 0 and OmegaConf.to_container(OmegaConf.create(yaml)) == config
        columns = events.Tensors("columns/text_summary")
        assert [c.step for c in columns] == [1, 2, 3]
        assert "| family | fully_synthetic |" in columns[0].tensor_proto.string_val[0].decode()
        assert [i.step for i in events.Images("plots/metrics")] == [3]
    else:
        client, run_id = mlflow_run(run)
        logged = client.get_run(run_id)
        assert logged.info.status == "FINISHED" and logged.info.run_name == run.name
        assert client.get_experiment(logged.info.experiment_id).name == "default"
        assert logged.data.params == flatten(config)
        assert logged.data.params["loop.generations"] == "3"
        assert logged.data.tags["family"] == "fully_synthetic"
        assert logged.data.tags["features"] == "raw(d=3)"
        assert (tmp_path / "outputs" / "mlflow.db").is_file()          # the default local store
        artifacts = Path(client.download_artifacts(run_id, "", str(tmp_path / "download")))
        assert OmegaConf.to_container(OmegaConf.load(artifacts / "config.yaml")) == config
        assert (artifacts / "plots" / "metrics.png").read_bytes() == \
            (run / "plots" / "metrics.png").read_bytes()


@pytest.mark.parametrize("logger", ["tensorboard", "mlflow"])
def test_image_run_logs_grids_and_plots_and_no_secret(cli, tmp_path, logger):
    key_file = tmp_path / "key.txt"
    key_file.write_text(SECRET + "\n")
    code, out, err = cli("run", *IMAGES, f"watermark.key_file={key_file}", f"logger={logger}")
    assert code == 0, err
    run = only_run(tmp_path / "outputs" / "default")
    grids = [run / "samples" / f"g{t:04d}.png" for t in (1, 2)]
    plots = sorted(p.stem for p in (run / "plots").glob("*.png"))
    assert plots == ["artifacts", "metrics"]
    if logger == "tensorboard":
        from PIL import Image

        events = tensorboard_events(run)
        samples = events.Images("samples")
        assert [i.step for i in samples] == [1, 2]
        with Image.open(grids[0]) as grid:
            assert (samples[0].width, samples[0].height) == grid.size
        for name in plots:
            assert [i.step for i in events.Images(f"plots/{name}")] == [2]
    else:
        client, run_id = mlflow_run(run)
        artifacts = Path(client.download_artifacts(run_id, "", str(tmp_path / "download")))
        for path in grids + [run / "plots" / f"{name}.png" for name in plots]:
            assert (artifacts / path.relative_to(run)).read_bytes() == path.read_bytes()
        assert client.get_run(run_id).data.params["watermark.key_file"] == str(key_file)
    files = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:                        # event files, mlflow.db and artifacts included
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in out + err


# ---- resume ----------------------------------------------------------------------------------

@pytest.mark.parametrize("logger", ["tensorboard", "mlflow"])
def test_resume_continues_the_log_without_duplicates(cli, tmp_path, monkeypatch, logger):
    with monkeypatch.context() as m:
        preempt_after_generation(m, 2)           # generation 2 checkpointed, not logged
        assert cli("run", *FAST, f"logger={logger}")[0] == -1
    run = only_run(tmp_path / "outputs" / "default")
    before = json.loads((run / "tracking.json").read_text())
    assert before["generations_logged"] == 1
    assert {s for values in logged_scalars(logger, run).values() for s, _ in values} == {1}

    code, _, err = cli("run", f"resume={run}", "progress=false")
    assert code == 0, err
    after = json.loads((run / "tracking.json").read_text())
    assert after == {**before, "generations_logged": 3}        # the same MLflow run, if any
    assert_matches_results(logger, run)                         # 1, 2 (caught up) and 3, once each
    if logger == "mlflow":
        client, run_id = mlflow_run(run)
        assert client.get_run(run_id).info.status == "FINISHED"
        assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1

    logged = logged_scalars(logger, run)
    code, out, _ = cli("run", f"resume={run}", "progress=false")      # complete: nothing to log
    assert code == 0 and "already complete" in out
    assert logged_scalars(logger, run) == logged


def test_tensorboard_resume_hides_a_step_logged_past_the_record(tmp_path):
    """A process killed after logging generation 2 but before tracking.json recorded it: the
    resumed writer's purge_step hides the first copy, so generation 2 is shown once."""
    pytest.importorskip("tensorboard")
    from madmark.tracking.tensorboard import TensorBoardConfig

    config = TensorBoardConfig(subdir="tensorboard")
    killed = config.open(tmp_path, "default", {})
    for t in (1, 2):
        killed.log_row(t, {"generation": t, "fid": float(t)})
    killed.close(failed=True)
    resumed = config.open(tmp_path, "default", {"generations_logged": 1})
    resumed.log_row(2, {"generation": 2, "fid": 20.0})
    resumed.close()
    fid = tensorboard_events(tmp_path).Scalars("fid")
    assert [(e.step, e.value) for e in fid] == [(1, 1.0), (2, 20.0)]


# ---- off, missing packages, helpers ----------------------------------------------------------

def test_logger_none_writes_no_tracking_files(shared_run):
    run, _ = shared_run(*FAST)                          # outputs/default/<date-time>
    assert not (run / "tracking.json").exists() and not (run / "tensorboard").exists()
    assert sorted(p.name for p in run.parent.parent.iterdir()) == ["default"]


@pytest.mark.parametrize("logger, package", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"),
                                             ("mlflow", "sqlalchemy")])
def test_missing_package_is_one_line_error_before_the_run(cli, tmp_path, monkeypatch, logger,
                                                          package):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, parent=None: None if name == package
                        else find_spec(name, parent))
    code, _, err = cli("run", *FAST, f"logger={logger}")
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert f"logger={logger} needs the {package} package" in line
    assert "pip install 'madmark[tracking]'" in line
    assert run_dirs(tmp_path / "outputs") == []


def test_split_row_and_flatten():
    values, texts = split_row({"generation": 2, "fid": 1.5, "kid": float("nan"), "k": 5,
                               "wm_marks": True, "features": "raw(d=3)", "n_calibration": None})
    assert values == {"generation": 2.0, "fid": 1.5, "k": 5.0}
    assert texts == {"wm_marks": "True", "features": "raw(d=3)"}
    assert flatten({"loop": {"bias": 0.8, "n_real": None}, "seed": 0}) == {
        "loop.bias": "0.8", "loop.n_real": "None", "seed": "0"}
