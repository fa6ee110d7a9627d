"""The mad_flow_2d preset: a RealNVP flow in a fully synthetic loop on the 2-D grid mixture."""
import math

from madmark.rundir import read_csv
from tests.madmark.conftest import run_dirs

#: a small, fast version of the preset: 500 points, 150 optimiser steps per generation
SMALL = ["data.n_train=500", "data.n_reference=500", "model.steps=150", "model.batch_size=128"]


def test_mad_flow_2d_preset_runs(cli, tmp_path):
    code, _, err = cli("run", "experiment=mad_flow_2d", "loop.generations=2", "progress=false",
                       *SMALL)
    assert code == 0, err
    (run,) = run_dirs(tmp_path / "outputs" / "mad_flow_2d")
    rows = read_csv(run / "results.csv")
    assert len(rows) == 2
    assert [r["generation"] for r in rows] == ["1", "2"]
    assert rows[0]["real_fraction"] == "1.0" and rows[1]["real_fraction"] == "0.0"
    for r in rows:
        assert r["fit_steps"] == "150.0" and r["features"].startswith("raw")
        nll, nll_first = float(r["fit_nll"]), float(r["fit_nll_first"])
        assert math.isfinite(nll) and nll < nll_first      # training improved on the start
        assert 0.0 <= float(r["precision"]) <= 1.0 and 0.0 <= float(r["recall"]) <= 1.0


def test_flow_refuses_image_data(cli, tmp_path):
    code, _, err = cli("run", "model=flow", "data=digits", "loop.generations=1", "progress=false")
    assert code == 2 and "FlowModel does not take image data" in err, err
    assert run_dirs(tmp_path / "outputs") == []
