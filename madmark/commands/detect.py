"""``madmark detect <dir> key_file=... [alpha=0.01 out=<csv>] [method= bits= strength=]``

Decodes every image under ``dir`` and tests it for the key's message: matched bits, one-sided
binomial p-value, flagged at false-positive rate ``alpha``. Writes a CSV (default
``./detect_<dir name>.csv``; an existing file is never overwritten). Method settings are read from
``dir/watermark.json`` when the folder was written by ``madmark embed``, else from the options.
Unreadable files, and images the method cannot read (DwtDct below 256 x 256, say), are listed with
the reason and skipped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from madcore.files import atomic_write_text
from madmark.commands.options import parse
from madcore.errors import MadmarkError
from madmark.folder_io import LoadedImage, group_by_shape, list_images, read_image
from madmark.hydra_app import report_error
from madmark.methods import build_method, secret_key
from madmark.rundir import rows_to_csv
from watermark import Detector, SecretKey, UnsupportedImageError

OPTIONS = {"key": "", "key_file": "", "alpha": 0.01, "out": "", "method": "", "bits": 0,
           "strength": 0.0, "batch_size": 64}
COLUMNS = ["path", "status", "reason", "matched_bits", "num_bits", "bit_accuracy", "p_value",
           "flagged"]
#: called with (shape (C, H, W), detector) before a shape group is tested
Prepare = Callable[[tuple, Detector], None]


def method_settings(folder: Path, opts: dict) -> dict:
    """Method, bits, strength: options given on the command line win over watermark.json."""
    recorded = {}
    info = folder / "watermark.json"
    if info.is_file():
        recorded = json.loads(info.read_text())
    return {"method": opts["method"] or recorded.get("method", "spread_spectrum"),
            "bits": opts["bits"] or recorded.get("bits", 32),
            "strength": opts["strength"] or recorded.get("strength", 0.01)}


def check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise MadmarkError(f"alpha={alpha} is outside (0, 1)", "set alpha=0.01 or similar")


def read_folder(folder: Path, role: str = "folder") -> list[LoadedImage]:
    """Every image file under ``folder`` (recursive, sorted); unreadable ones carry their error."""
    if not folder.is_dir():
        raise MadmarkError(f"{role} {folder} does not exist", "pass a folder of images")
    paths = list_images(folder)
    if not paths:
        raise MadmarkError(f"no images found under {folder}", "pass a folder with png/jpg images")
    return [read_image(p) for p in paths]


def detect_images(folder: Path, items: list[LoadedImage], key: SecretKey, settings: dict,
                  opts: dict, prepare: Optional[Prepare] = None) -> list[dict]:
    """One row per item (paths relative to ``folder``), in :data:`COLUMNS`.

    Images are tested in groups of one shape (C, H, W); ``prepare(shape, detector)`` runs on each
    group's detector before it tests (``madmark filter`` calibrates it there)."""
    rows = [{"path": str(it.path.relative_to(folder)), "status": "unreadable", "reason": it.error}
            for it in items]
    for (c, h, w), idx in group_by_shape(items).items():
        method = build_method(settings["method"], key, h, w, settings["bits"], settings["strength"])
        detector = Detector(method, key, alpha=opts["alpha"], batch_size=opts["batch_size"])
        try:
            if prepare is not None:
                prepare((c, h, w), detector)
            result = detector(torch.stack([items[i].image for i in idx]))
        except UnsupportedImageError as error:             # e.g. DwtDct on a small image
            for i in idx:
                rows[i].update(status="skipped", reason=str(error).splitlines()[0])
            continue
        for j, i in enumerate(idx):
            rows[i].update(status="decoded", reason="", matched_bits=int(result.matched_bits[j]),
                           num_bits=method.num_bits,
                           bit_accuracy=f"{float(result.bit_accuracy[j]):.4f}",
                           p_value=f"{float(result.p_value[j]):.6g}",
                           flagged=bool(result.flagged[j]))
    return rows


def detect_folder(folder: Path, opts: dict) -> list[dict]:
    if not folder.is_dir():
        raise MadmarkError(f"folder {folder} does not exist", "pass a folder of images")
    check_alpha(opts["alpha"])
    key = secret_key(opts["key"], opts["key_file"])
    settings = method_settings(folder, opts)
    return detect_images(folder, read_folder(folder), key, settings, opts)


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        opts = parse(args, ["dir"], OPTIONS, "detect")
        folder = Path(opts["dir"])
        out = Path(opts["out"] or f"detect_{folder.resolve().name}.csv")
        if out.exists():
            raise MadmarkError(f"{out} already exists (nothing is overwritten)",
                               "pass out=<new csv path>")
        rows = detect_folder(folder, opts)
    except MadmarkError as e:
        return report_error(e)
    atomic_write_text(out, rows_to_csv([{c: row.get(c, "") for c in COLUMNS} for row in rows]))
    for row in rows:
        if row["status"] in ("unreadable", "skipped"):
            print(f"skipped {row['path']}: {row['reason']}", file=sys.stderr)
    flagged = sum(bool(r.get("flagged")) for r in rows)
    decoded = sum(r["status"] == "decoded" for r in rows)
    print(f"{flagged} of {decoded} decoded images flagged at alpha={opts['alpha']}; wrote {out}")
    return 0
