"""``madmark filter <data_dir> key_file=... [alpha=0.01 calibrate=<clean_dir> out=<dir>]``

(Text — .txt documents, a .jsonl, or a folder of them — is filtered too, into kept/ and flagged/
copies: ``madmark filter <path> tokenizer=<tokenizer.json> key_file=... out=<dir>`` or
``run=<text run folder>``; see madmark/commands/text.py.)

Cleans a training set before retraining: tests every image under ``data_dir`` (recursive) for the
key's watermark, like ``madmark detect``, and splits the set into images to keep and images to drop.
Writes a NEW folder ``out`` (default ``./filter_<data_dir name>``; absent or empty, else refused),
under a temporary name beside it, renamed when complete (a failed run leaves nothing):

    manifest.csv   one row per file: path, status (decoded|skipped|unreadable), reason,
                   matched_bits, num_bits, bit_accuracy, p_value, flagged, notes,
                   decision (keep|flag|unreadable|untested)
    kept.txt       paths (relative to data_dir) of the images to train on, one per line
    flagged.txt    paths of the images that carry the watermark at false-positive rate alpha
    summary.json   counts, alpha, method, bits, analytic or calibrated p-values, calibration's
                   measured false-positive rates; the key's fingerprint, never the key

Every file under ``data_dir`` is listed. Unreadable files (not an image Pillow can decode: empty,
truncated, text named .png, permission denied, dangling symlink) go in neither list (a training
loader could not read them); nor do images the method cannot read (below spread spectrum's minimum
size, DwtDct below 256 x 256 or grey: "untested", since nothing certifies them clean). Both are
listed in the manifest with the reason and on stderr. Hidden entries are not read and are counted.
The user's files are only read, never moved or changed.

``calibrate=<clean_dir>``: a folder of known-clean images (never watermarked with this key). Each
shape group (C, H, W) of the data is calibrated (``Detector.calibrate``) on the clean images of the
same shape, so its p-values account for the decoder's measured bit bias and spread on clean images
like the data. Clean images are not resized: resampling changes exactly the fine detail a watermark
decoder reads, so a calibration on resized images would mis-state the false-positive rate. A data
shape with no clean images of that shape is an error naming the shapes. With n clean images the
calibration can certify alpha >= 1 / (n + 1) only (see watermark/detector.py); below that it still
works but never flags a count a clean image reached, and a note says so.

Method settings come from the options, else ``data_dir/watermark.json``, as for ``madmark detect``.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import torch

from madcore.errors import MadmarkError
from madcore.files import atomic_write_text
from madmark.commands.detect import (COLUMNS, check_alpha, check_recorded_key, detect_images,
                                     method_settings, shape_methods)
from madmark.commands import text
from madmark.commands.options import FilterOptions, parse
from madmark.folder_io import (LoadedImage, check_output_folder, group_by_shape, output_folder,
                               read_folder, report_problems)
from madmark.hydra_app import report_error
from madmark.methods import check_method, secret_key
from madmark.rundir import rows_to_csv
from madmark.text_io import choose_modality
from watermark import Detector

OPTIONS = FilterOptions
MANIFEST = [*COLUMNS, "decision"]


def shape_name(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _shapes(groups: dict[tuple[int, ...], list[int]]) -> str:
    return ", ".join(f"{shape_name(s)} ({len(i)})" for s, i in groups.items()) or "none readable"


class Calibrator:
    """``prepare`` hook of :func:`detect_images`: calibrates each shape group's detector on the
    clean images of that shape and records what it measured."""

    def __init__(self, clean: list[LoadedImage], batch_size: int):
        self.clean, self.batch_size = clean, batch_size
        self.groups = group_by_shape(clean)
        self.records: list[dict] = []

    def check_covers(self, data: list[LoadedImage], clean_dir: Path,
                     readable: Optional[set] = None) -> None:
        """Every data shape (of those in ``readable``, the shapes the method can read, if given)
        needs clean images of that shape."""
        needed = {s: i for s, i in group_by_shape(data).items()
                  if readable is None or s in readable}
        missing = [s for s in needed if s not in self.groups]
        if missing:
            raise MadmarkError(
                f"calibrate folder {clean_dir} has no clean images of shape "
                f"{', '.join(map(shape_name, missing))} (C x H x W; data: {_shapes(needed)}; "
                f"clean: {_shapes(self.groups)})",
                "add known-clean images of every data shape (crop them to size; resizing would "
                "change the statistics the calibration measures)")

    def __call__(self, shape: tuple[int, ...], detector: Detector) -> None:
        idx = self.groups[shape]
        batches = (torch.stack([self.clean[i].image for i in idx[s:s + self.batch_size]])
                   for s in range(0, len(idx), self.batch_size))
        cal = detector.calibrate(batches)
        self.records.append({
            "shape": shape_name(shape), "n_clean": cal.n_images, "num_bits": detector.num_bits,
            "threshold_analytic": cal.analytic_threshold,
            "threshold_calibrated": cal.corrected_threshold,
            "empirical_fpr_analytic": cal.empirical_fpr_analytic,
            "empirical_fpr_calibrated": cal.empirical_fpr_corrected,
            "dispersion": None if math.isnan(cal.dispersion) else cal.dispersion,
            "certifies_alpha": detector.alpha >= 1 / (cal.n_images + 1)})


def filter_folder(data_dir: Path, out: Path, opts: dict) -> dict:
    """Test ``data_dir`` and return the manifest rows and summary (nothing is written here)."""
    if not data_dir.is_dir():
        raise MadmarkError(f"data folder {data_dir} does not exist", "pass a folder of images")
    check_alpha(opts["alpha"])
    check_output_folder(out, data_dir, "data folder", "out=<folder>")
    key = secret_key(opts["key"], opts["key_file"])
    check_recorded_key(data_dir, key, opts)
    settings = method_settings(data_dir, opts)
    check_method(settings["method"], key, settings["bits"], settings["strength"])
    items, scan = read_folder(data_dir, "data folder")
    methods = shape_methods(items, key, settings)
    calibrator = None
    if opts["calibrate"]:
        clean_dir = Path(opts["calibrate"])
        clean, _ = read_folder(clean_dir, "calibrate folder")
        for it in clean:
            if it.image is None:
                print(f"calibration: unreadable {it.path}: {it.error}", file=sys.stderr)
        calibrator = Calibrator(clean, opts["batch_size"])
        calibrator.check_covers(items, clean_dir,
                                {s for s, m in methods.items() if not isinstance(m, Exception)})
    groups: list[dict] = []

    def prepare(shape: tuple[int, ...], detector: Detector) -> None:
        if calibrator is not None:
            calibrator(shape, detector)
        groups.append({"shape": shape_name(shape), "num_bits": detector.num_bits,
                       "threshold": detector.threshold})

    rows = detect_images(data_dir, items, key, settings, opts, prepare, methods)
    for row in rows:
        row["decision"] = ("unreadable" if row["status"] == "unreadable"
                           else "untested" if row["status"] == "skipped"
                           else "flag" if row["flagged"] else "keep")
    sizes = {shape_name(shape): len(idx) for shape, idx in group_by_shape(items).items()}
    for group in groups:
        group["n_images"] = sizes[group["shape"]]
    count = {d: sum(r["decision"] == d for r in rows)
             for d in ("keep", "flag", "unreadable", "untested")}
    bits = sorted({g["num_bits"] for g in groups})
    summary = {
        "data_dir": str(data_dir.resolve()), "paths_relative_to": "data_dir",
        "n_files": len(rows), "n_decoded": count["keep"] + count["flag"],
        "n_kept": count["keep"], "n_flagged": count["flag"], "n_unreadable": count["unreadable"],
        "n_untested": count["untested"], "n_hidden_not_read": scan.hidden,
        "alpha": opts["alpha"], "method": settings["method"],
        "bits": bits[0] if len(bits) == 1 else bits, "strength": settings["strength"],
        "key_fingerprint": key.fingerprint,
        "p_values": "calibrated" if calibrator else "analytic",
        "groups": groups,
        "calibration": None if calibrator is None else {
            "clean_dir": str(Path(opts["calibrate"]).resolve()),
            "n_clean_files": len(calibrator.clean),
            "n_clean_unreadable": sum(it.image is None for it in calibrator.clean),
            "groups": calibrator.records},
    }
    return {"rows": rows, "summary": summary, "not_read": scan.not_read()}


def write_outputs(out: Path, result: dict) -> None:
    """manifest.csv, kept.txt, flagged.txt, then summary.json, into a temporary folder beside
    ``out`` that is renamed to ``out`` (absent or empty) when all are written."""
    rows = result["rows"]
    with output_folder(out) as tmp:
        atomic_write_text(tmp / "manifest.csv", rows_to_csv({c: r.get(c, "") for c in MANIFEST}
                                                            for r in rows))
        for name, decision in (("kept.txt", "keep"), ("flagged.txt", "flag")):
            atomic_write_text(tmp / name, "".join(f"{r['path']}\n" for r in rows
                                                  if r["decision"] == decision))
        atomic_write_text(tmp / "summary.json", json.dumps(result["summary"], indent=2) + "\n")


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        print(text.__doc__)
        return 0
    try:
        opts = parse(args, ["data_dir"], OPTIONS, "filter")
        data_dir = Path(opts["data_dir"])
        given = text.given_options(args)
        modality = choose_modality(data_dir, opts["modality"])
        text.check_options(modality, given, "filter")
        if modality == "text":
            return text.filter_main(data_dir, opts, given,
                                    Path(opts["out"]) if opts["out"] else None)
        out = Path(opts["out"] or f"filter_{data_dir.resolve().name}")
        result = filter_folder(data_dir, out, opts)
        write_outputs(out, result)
    except MadmarkError as e:
        return report_error(e)
    report_problems(result["rows"], "path", f"{out}/manifest.csv")
    s = result["summary"]
    for cal in (s["calibration"] or {}).get("groups", []):
        if not cal["certifies_alpha"]:
            print(f"note: {cal['n_clean']} clean images of shape {cal['shape']} cannot certify "
                  f"alpha={s['alpha']} (needs >= {math.ceil(1 / s['alpha'] - 1)}); clean "
                  "counts seen in calibration are never flagged", file=sys.stderr)
    listed = [f"{s['n_unreadable']} unreadable"] * bool(s["n_unreadable"]) + \
        [f"{s['n_untested']} untested (the method cannot read them)"] * bool(s["n_untested"]) + \
        [f"not read: {result['not_read']}"] * bool(result["not_read"])
    unreadable = f"; {', '.join(listed)}, see manifest.csv" if listed else ""
    print(f"kept {s['n_kept']}, flagged {s['n_flagged']} of {s['n_decoded']} images "
          f"(alpha={s['alpha']}, {s['p_values']} p-values{unreadable}); wrote {out}")
    return 0
