"""The run directory: everything one run writes, atomically.

    <run_dir>/config.yaml      resolved config (the run is reproducible from it)
    <run_dir>/env.json         versions, device, threads, seed, command line
    <run_dir>/status.json      {"state": running|complete|failed, "generations_done", ...}
    <run_dir>/state/g<t>.pt    checkpoint per finished generation (loops.checkpoint)
    <run_dir>/results.csv      one row per finished generation
    <run_dir>/samples/g<t>.png sample grid per generation (image data)
    <run_dir>/tracking.json    with logger=tensorboard|mlflow: what was logged where (madmark.tracking)
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from loops.checkpoint import Checkpoints
from madcore.files import atomic_write_bytes, atomic_write_text

_PACKAGES = ("madmark", "torch", "torchvision", "numpy", "scipy", "kornia", "torchmetrics",
             "hydra-core", "omegaconf", "scikit-learn", "scikit-image", "mlxtend")


def environment(seed: int, device: torch.device) -> dict[str, Any]:
    """What the numbers of a run depend on besides its config."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {
        "seed": seed,
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "argv": sys.argv,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
    return env


def rows_to_csv(rows: Iterable[dict[str, Any]]) -> str:
    """CSV text of rows; columns in order of first appearance, missing cells empty.

    Floats are written with ``repr`` so values round-trip exactly."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return out.getvalue()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class RunDir:
    """Writes the files of one run under ``path`` (created if needed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.checkpoints = Checkpoints(self.path / "state")

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def write_config(self, cfg: DictConfig) -> None:
        atomic_write_text(self.config_path, OmegaConf.to_yaml(cfg, resolve=True))

    def read_config(self) -> DictConfig:
        return OmegaConf.load(self.config_path)

    def write_env(self, env: dict[str, Any], name: str = "env.json") -> None:
        atomic_write_text(self.path / name, json.dumps(env, indent=2, default=str) + "\n")

    def write_status(self, state: str, **info: Any) -> None:
        atomic_write_text(self.path / "status.json",
                          json.dumps({"state": state, **info}, indent=2) + "\n")

    def read_status(self) -> dict[str, Any]:
        path = self.path / "status.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_results(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path / "results.csv", rows_to_csv(rows))

    def grid_path(self, t: int) -> Path:
        return self.path / "samples" / f"g{t:04d}.png"

    def save_grid(self, t: int, images: torch.Tensor, n: int = 64) -> Path:
        """Save the first ``n`` images (N, C, H, W) in [0, 1] as ``samples/g<t>.png``."""
        from PIL import Image
        from torchvision.utils import make_grid

        grid = make_grid(images[:n].detach().float().cpu().clamp(0, 1), nrow=8, padding=2,
                         pad_value=1.0)
        array = (grid.mul(255).round().to(torch.uint8).permute(1, 2, 0)).numpy()
        image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        path = self.grid_path(t)
        atomic_write_bytes(path, buffer.getvalue())
        return path
