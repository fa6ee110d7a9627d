"""The run directory: everything one run writes, atomically.

    <run_dir>/config.yaml      resolved config (the run is reproducible from it)
    <run_dir>/env.json         versions, device, threads, seed, command line
    <run_dir>/status.json      {"state": running|complete|failed, "generations_done", ...}
    <run_dir>/state/g<t>.pt    checkpoint per finished generation (loops.checkpoint)
    <run_dir>/results.csv      one row per finished generation
    <run_dir>/samples/g<t>.png sample grid per generation (image data)
    <run_dir>/tracking.json    with logger=tensorboard|mlflow: what was logged where (madmark.tracking)
    <run_dir>/state/set-aside-<time>/   checkpoints moved aside by resume_from=<t> (and the
                               results.csv of then)
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from eval.growth import add_growth
from loops.checkpoint import Checkpoints
from madcore.errors import MadmarkError
from madcore.files import atomic_write_bytes, atomic_write_text, is_temporary
from madmark.threads import in_effect

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
        "threads": in_effect(),          # the job's thread budget and what torch uses
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


def results_rows(rows: list[dict]) -> list[dict]:
    """The rows of results.csv from the engine's rows: with artifact growth factors
    (eval.growth.add_growth) when they carry artifacts."""
    if rows and "artifact_energy" in rows[0]:
        return add_growth(rows)
    return rows


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
        try:
            cfg = OmegaConf.load(self.config_path)
        except Exception as error:        # OSError, YAML and OmegaConf errors
            raise MadmarkError(f"{self.config_path} is unreadable ({type(error).__name__})",
                               "restore the run's config.yaml (it is the run's recorded "
                               "config)") from None
        if not isinstance(cfg, DictConfig):
            raise MadmarkError(f"{self.config_path} is not a config (a YAML mapping)",
                               "restore the run's config.yaml (it is the run's recorded config)")
        return cfg

    def write_env(self, env: dict[str, Any], name: str = "env.json") -> None:
        atomic_write_text(self.path / name, json.dumps(env, indent=2, default=str) + "\n")

    def write_status(self, state: str, **info: Any) -> None:
        atomic_write_text(self.path / "status.json",
                          json.dumps({"state": state, **info}, indent=2) + "\n")

    def read_status(self) -> dict[str, Any]:
        """status.json, or {} when it is absent or unreadable (a resume rewrites it)."""
        path = self.path / "status.json"
        try:
            status = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}

    def remove_temporaries(self) -> list[Path]:
        """Remove the temporary files and folders a killed atomic writer left anywhere in the run
        directory (madcore.files.is_temporary); returns them."""
        found = [p for p in self.path.rglob(".*.tmp") if is_temporary(p)]
        for p in found:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return found

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
