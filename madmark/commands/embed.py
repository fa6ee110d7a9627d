"""``madmark embed <in_dir> <out_dir> key_file=... [method=spread_spectrum bits=32 strength=0.01]``

Watermarks every image under ``in_dir`` into a NEW folder ``out_dir`` as lossless PNGs (same
relative paths, ``.png`` suffix) and writes ``out_dir/manifest.csv`` (one row per input: output
path, status, PSNR) and ``out_dir/watermark.json`` (method, bits, strength, key fingerprint — never
the key). Inputs are only read; unreadable files, and images the method cannot mark (DwtDct below
256 x 256, say), are listed with the reason and skipped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from madcore.files import atomic_write_text
from madmark.commands.options import parse
from madcore.errors import MadmarkError
from madcore.images import write_png
from madmark.folder_io import group_by_shape, list_images, read_image
from madmark.hydra_app import report_error
from madmark.methods import build_method, secret_key
from madmark.rundir import rows_to_csv
from watermark import UnsupportedImageError, psnr

OPTIONS = {"key": "", "key_file": "", "method": "spread_spectrum", "bits": 32, "strength": 0.01,
           "batch_size": 64}


def embed_folder(in_dir: Path, out_dir: Path, opts: dict) -> dict:
    if not in_dir.is_dir():
        raise MadmarkError(f"input folder {in_dir} does not exist", "pass a folder of images")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MadmarkError(f"output folder {out_dir} is not empty (nothing is overwritten)",
                           "pass a new or empty output folder")
    if out_dir.resolve().is_relative_to(in_dir.resolve()):
        raise MadmarkError(f"output folder {out_dir} lies inside the input folder",
                           "pass an output folder outside the input folder")
    key = secret_key(opts["key"], opts["key_file"])
    paths = list_images(in_dir)
    if not paths:
        raise MadmarkError(f"no images found under {in_dir}", "pass a folder with png/jpg images")
    items = [read_image(p) for p in paths]
    rows = {i: {"input": str(it.path.relative_to(in_dir)), "output": "", "status": "unreadable",
                "reason": it.error, "psnr_db": ""} for i, it in enumerate(items)}
    for (c, h, w), idx in group_by_shape(items).items():
        method = build_method(opts["method"], key, h, w, opts["bits"], opts["strength"])
        message = key.message(method.num_bits)
        for start in range(0, len(idx), opts["batch_size"]):
            chunk = idx[start:start + opts["batch_size"]]
            x = torch.stack([items[i].image for i in chunk])
            try:
                x_w = method.embed(x, message.expand(len(chunk), -1))
            except UnsupportedImageError as error:         # e.g. DwtDct on a small image
                for i in chunk:
                    rows[i].update(status="skipped", reason=str(error).splitlines()[0])
                continue
            quality = psnr(x_w, x)
            for j, i in enumerate(chunk):
                rel = Path(rows[i]["input"]).with_suffix(".png")
                write_png(out_dir / rel, x_w[j], alpha=items[i].alpha)   # transparency kept
                rows[i].update(output=str(rel), status="embedded", reason="",
                               psnr_db=f"{float(quality[j]):.2f}")
    atomic_write_text(out_dir / "manifest.csv", rows_to_csv(rows[i] for i in sorted(rows)))
    info = {"method": opts["method"], "bits": opts["bits"], "strength": opts["strength"],
            "key_fingerprint": key.fingerprint, "n_embedded":
            sum(r["status"] == "embedded" for r in rows.values()),
            "n_unreadable": sum(r["status"] == "unreadable" for r in rows.values()),
            "n_skipped": sum(r["status"] == "skipped" for r in rows.values())}
    atomic_write_text(out_dir / "watermark.json", json.dumps(info, indent=2) + "\n")
    return {**info, "rows": [rows[i] for i in sorted(rows)]}


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        opts = parse(args, ["in_dir", "out_dir"], OPTIONS, "embed")
        result = embed_folder(Path(opts["in_dir"]), Path(opts["out_dir"]), opts)
    except MadmarkError as e:
        return report_error(e)
    for row in result["rows"]:
        if row["status"] in ("unreadable", "skipped"):
            print(f"skipped {row['input']}: {row['reason']}", file=sys.stderr)
    print(f"embedded {result['n_embedded']} images into {opts['out_dir']} "
          f"({result['n_unreadable']} unreadable, {result['n_skipped']} not markable by "
          f"{opts['method']}; listed in manifest.csv)")
    return 0
