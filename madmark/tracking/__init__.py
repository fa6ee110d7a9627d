"""Experiment tracking for ``madmark run``: the ``logger`` config group (``configs/logger/``).

    madmark run logger=tensorboard      # <run_dir>/tensorboard/   (madmark.tracking.tensorboard)
    madmark run logger=mlflow           # ${out_dir}/mlflow.db     (madmark.tracking.mlflow)

The chosen logger is built from its config's ``_target_`` (``logger=none``: ``_target_: null``,
nothing is built) and its package is checked before the run directory is written. Rank 0 logs, in
this order: the resolved config when the run starts; after each generation its sample grid and
its results.csv row (as ``results.csv`` had it then: growth factors of generations before the
first marked pool are re-based later in results.csv, not in the log); the plots when the run ends.

``<run_dir>/tracking.json`` records the logger, the last generation logged and what the logger
needs to continue (MLflow: store and run id). A resumed run continues the same log and logs only
the generations not logged yet, catching up on ones a killed process checkpointed but did not log.
No secret reaches a logger: the config holds a key's file name (``watermark.key_file``), never
the key.
"""
from __future__ import annotations

import json
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from madcore.files import atomic_write_text
from madmark.rundir import RunDir
from madmark.tracking.base import Logger, LoggerConfig

TRACKING_FILE = "tracking.json"


def logger_config(cfg: DictConfig) -> LoggerConfig | None:
    """The run's logger config, built from ``cfg.logger._target_`` and checked (MadmarkError when
    its package is missing); None for ``logger=none`` and for runs recorded without the group."""
    node = cfg.get("logger")
    if node is None or node.get("_target_") is None:
        return None
    config = instantiate(node)
    config.check()
    return config


class RunTracking:
    """Logs one run directory through ``logger`` (see the module docstring); a context manager
    that closes the log, as failed when the block raises."""

    def __init__(self, config: LoggerConfig, run: RunDir, cfg: DictConfig):
        self.run = run
        self.path = run.path / TRACKING_FILE
        record = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.target = OmegaConf.select(cfg, "logger._target_")
        self.logged = int(record.get("generations_logged", 0))
        self.logger: Logger = config.open(run.path, str(cfg.name), record)
        if not record:
            self.logger.log_config(OmegaConf.to_container(cfg, resolve=True))
        self._save()

    def log_generations(self, rows: list[dict[str, Any]]) -> None:
        """Log the rows (generations 1..n, as results.csv holds them) not logged yet, each with
        its sample grid when there is one."""
        for row in rows[self.logged:]:
            t = int(row["generation"])
            grid = self.run.grid_path(t)
            if grid.is_file():
                self.logger.log_image("samples", grid, t)
            self.logger.log_row(t, row)
            self.logger.flush()
            self.logged = t
            self._save()

    def log_plots(self) -> None:
        """``plots/<name>.png`` as ``plots/<name>`` at the last logged generation."""
        for png in sorted((self.run.path / "plots").glob("*.png")):
            self.logger.log_image(f"plots/{png.stem}", png, self.logged)
        self.logger.flush()

    def _save(self) -> None:
        record = {"logger": self.target, "generations_logged": self.logged, **self.logger.state}
        atomic_write_text(self.path, json.dumps(record, indent=2) + "\n")

    def __enter__(self) -> RunTracking:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.logger.close(failed=kind is not None)


def open_tracking(cfg: DictConfig, run: RunDir) -> RunTracking | None:
    """The run's tracking, or None for ``logger=none``."""
    config = logger_config(cfg)
    return None if config is None else RunTracking(config, run, cfg)
