"""MLflow (``logger=mlflow``): one MLflow run per madmark run, in the experiment named by the run's
``name``, with the run directory's name as run name.

Where: ``logger.tracking_uri``, by default a SQLite file next to the runs
(``sqlite:///${out_dir}/mlflow.db``; MLflow 3's file store ``./mlruns`` is in maintenance mode and
refused without an opt-out), artifacts of a new experiment in ``logger.artifact_location``
(default ``${out_dir}/mlartifacts``), or an MLflow server (``http://host:5000``, with
``logger.artifact_location=null`` to keep the server's artifact store). Browse the local store with
``mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`` (the UI needs the full ``mlflow``).

Logged:
    params           the resolved config, flattened (``loop.bias``, ``watermark.key_file``, ...)
    config.yaml      artifact: the resolved config
    metrics          every numeric results.csv column of generation t, step = t
    tags             the non-numeric columns (family, features, ...: the latest value), run_dir
    samples/g<t>.png artifact per generation (image data); plots/<name>.png when the run ends

The tracking URI and the run id are recorded in ``tracking.json``: a resumed run continues the same
MLflow run, from the same store wherever it is started.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from madcore.errors import MadmarkError
from madmark.tracking.base import flatten, require, split_row

#: MLflow's limit on params per log_batch call
_BATCH = 100
_SQLITE = "sqlite:///"


def absolute_uri(uri: str) -> str:
    """``sqlite:///<path>`` with the path made absolute (a resume may start in another folder)
    and its folder created; any other URI unchanged."""
    if not uri.startswith(_SQLITE):
        return uri
    path = Path(uri[len(_SQLITE):]).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return _SQLITE + str(path)


@dataclass
class MlflowConfig:
    """``configs/logger/mlflow.yaml``.

    Attributes:
        tracking_uri: the MLflow store or server.
        artifact_location: where a new experiment stores its artifacts (a folder or URI);
            None = the store's default (a server's artifact store).
    """

    tracking_uri: str
    artifact_location: str | None

    def check(self) -> None:
        database = ("sqlalchemy", "alembic") if self.tracking_uri.startswith("sqlite:") else ()
        require("mlflow", ("mlflow", *database))

    def open(self, run_dir: Path, experiment: str, record: dict[str, Any]) -> MlflowLogger:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        uri = record.get("tracking_uri") or absolute_uri(self.tracking_uri)
        try:
            client = MlflowClient(tracking_uri=uri)
            run_id = record.get("run_id")
            if run_id:
                client.update_run(run_id, status="RUNNING")
            else:
                run_id = client.create_run(self._experiment_id(client, experiment),
                                           run_name=Path(run_dir).name,
                                           tags={"run_dir": str(Path(run_dir).resolve())}
                                           ).info.run_id
        except MlflowException as error:
            raise MadmarkError(f"MLflow at {uri}: {str(error).splitlines()[0]}",
                               "set logger.tracking_uri to sqlite:///<file> or a running MLflow "
                               "server's http://host:port") from error
        return MlflowLogger(client, run_id, Path(run_dir), {"tracking_uri": uri, "run_id": run_id})

    def _experiment_id(self, client, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = self.artifact_location
        if location is not None and "://" not in location:
            location = Path(location).expanduser().resolve().as_uri()
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:            # created meanwhile by a parallel sweep job
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id


class MlflowLogger:
    """Logs one run to MLflow run ``run_id`` (see the module docstring)."""

    def __init__(self, client, run_id: str, run_dir: Path, state: dict[str, Any]):
        self.client, self.run_id, self.run_dir, self.state = client, run_id, run_dir, state

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten(config).items()]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + _BATCH])
        self.client.log_dict(self.run_id, config, "config.yaml")

    def log_row(self, t: int, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        values, texts = split_row(row)
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id,
                              metrics=[Metric(k, v, now, int(t)) for k, v in values.items()],
                              tags=[RunTag(k, v) for k, v in texts.items()])

    def log_image(self, tag: str, png_path: Path, t: int) -> None:
        folder = Path(png_path).parent.relative_to(self.run_dir).as_posix()
        self.client.log_artifact(self.run_id, str(png_path), artifact_path=folder)

    def flush(self) -> None:
        """Nothing: every call above has reached the store when it returns."""

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
