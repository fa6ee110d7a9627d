"""TensorBoard (``logger=tensorboard``): event files in ``<run_dir>/<logger.subdir>/``, read with
``tensorboard --logdir outputs`` (every run under ``outputs/`` side by side).

Logged, through ``torch.utils.tensorboard.SummaryWriter``:
    config           text at step 0: the resolved config as YAML
    <column>         scalar at step t: every numeric results.csv column of generation t, by name
    columns          text at step t: the non-numeric columns (family, features, origin_counts, ...)
    samples          image at step t: the sample grid samples/g<t>.png (image data)
    plots/<name>     image at the last generation: plots/<name>.png, when the run ends

TensorBoard stores scalars as float32. A resumed run opens its writer with ``purge_step`` = the
first generation not logged yet: TensorBoard then drops any event a killed process wrote from that
step on, so no generation is shown twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from madmark.tracking.base import require, split_row


@dataclass
class TensorBoardConfig:
    """``configs/logger/tensorboard.yaml``.

    Attributes:
        subdir: folder inside the run directory that holds the event files.
    """

    subdir: str

    def check(self) -> None:
        require("tensorboard", ("tensorboard",))

    def open(self, run_dir: Path, experiment: str, record: dict[str, Any]) -> TensorBoardLogger:
        resumed = bool(record)
        purge_step = int(record.get("generations_logged", 0)) + 1 if resumed else None
        return TensorBoardLogger(Path(run_dir) / self.subdir, purge_step)


class TensorBoardLogger:
    """Writes one run's event files into ``log_dir`` (see the module docstring)."""

    def __init__(self, log_dir: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        self.state: dict[str, Any] = {}

    def log_config(self, config: dict[str, Any]) -> None:
        text = OmegaConf.to_yaml(config)                # as config.yaml has it
        self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()), 0)

    def log_row(self, t: int, row: dict[str, Any]) -> None:
        values, texts = split_row(row)
        for key, value in values.items():
            self.writer.add_scalar(key, value, t)
        if texts:
            table = "| column | value |\n| --- | --- |\n" + "".join(
                f"| {k} | {v} |\n" for k, v in texts.items())
            self.writer.add_text("columns", table, t)

    def log_image(self, tag: str, png_path: Path, t: int) -> None:
        from PIL import Image

        with Image.open(png_path) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(tag, pixels, t, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()
