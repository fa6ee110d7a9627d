"""``madmark detect <dir> key_file=... [alpha=0.01 out=<csv>] [method= bits= strength=]``

(Text — .txt documents, a .jsonl, or a folder of them — is tested too: ``madmark detect <path>
tokenizer=<tokenizer.json> key_file=... [method=kgw|exp ...]`` or ``run=<text run folder>``; see
madmark/commands/text.py. ``modality=auto|image|text``: auto takes .txt/.jsonl files, and folders
holding them and no image files, as text.)

Decodes every image under ``dir`` and tests it for the key's message: matched bits, one-sided
binomial p-value, flagged at false-positive rate ``alpha``. Writes a CSV (default
``./detect_<dir name>.csv``; an existing file is never overwritten) with one row per file: path,
status (decoded|skipped|unreadable), reason, matched_bits, num_bits, bit_accuracy, p_value,
flagged, notes. Method settings are read from ``dir/watermark.json`` when the folder was written by
``madmark embed`` (its manifest.csv and watermark.json are then not tested), else from the options;
a key whose fingerprint is not the one watermark.json records is refused (``other_key=true``
tests it anyway).

Every file under ``dir`` is listed: files that are not images Pillow can decode are "unreadable",
images the method cannot read at their size (below spread spectrum's minimum, DwtDct below
256 x 256 or grey) are "skipped"; both with the reason, and on stderr. Hidden entries are not read
and are counted. Transparency is read apart and not tested (the mark is in the colour channels).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from madcore.errors import MadmarkError
from madcore.files import atomic_write_text
from madmark.commands import text
from madmark.commands.options import DetectOptions, EmbedOptions, parse
from madmark.folder_io import (SKIPPED, UNREADABLE, FolderScan, LoadedImage, embed_record,
                               group_by_shape, read_folder, report_problems)
from madmark.hydra_app import report_error
from madmark.methods import check_method, method_for_shape, secret_key, skip_reason
from madmark.rundir import rows_to_csv
from madmark.text_io import choose_modality
from watermark import Detector, SecretKey, UnsupportedImageError, Watermarker

OPTIONS = DetectOptions
COLUMNS = ["path", "status", "reason", "matched_bits", "num_bits", "bit_accuracy", "p_value",
           "flagged", "notes"]
#: called with (shape (C, H, W), detector) before a shape group is tested
Prepare = Callable[[tuple, Detector], None]


def method_settings(folder: Path, opts: dict) -> dict:
    """Method, bits, strength: options given on the command line win over watermark.json, which
    wins over ``madmark embed``'s defaults (:class:`EmbedOptions`)."""
    given = opts["method"] and opts["bits"] and opts["strength"]
    recorded = {} if given else embed_record(folder) or {}
    return {key: opts[key] or recorded.get(key, getattr(EmbedOptions, key))
            for key in ("method", "bits", "strength")}


def check_recorded_key(folder: Path, key: SecretKey, opts: dict) -> None:
    """Refuse a key other than the one ``madmark embed`` recorded (by fingerprint) in the
    folder's watermark.json: every image would test negative for the wrong reason.
    ``other_key=true`` tests it anyway (a control)."""
    record = embed_record(folder, strict=False)
    if record is None or opts.get("other_key"):
        return
    recorded = str(record["key_fingerprint"])
    if recorded != key.fingerprint:
        raise MadmarkError(f"{folder / 'watermark.json'} says its images were marked with key "
                           f"{recorded}, the key given is {key.fingerprint} (fingerprints)",
                           "pass the key madmark embed used (key= or key_file=), or "
                           "other_key=true to test this key anyway")


def check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise MadmarkError(f"alpha={alpha} is outside (0, 1)", "set alpha=0.01 or similar")


def shape_methods(items: list[LoadedImage], key: SecretKey,
                  settings: dict) -> dict[tuple, Watermarker | UnsupportedImageError]:
    """Each shape (C, H, W) of the readable items: its method, or why the method cannot read it."""
    methods: dict[tuple, Watermarker | UnsupportedImageError] = {}
    for shape in group_by_shape(items):
        try:
            methods[shape] = method_for_shape(settings["method"], key, shape, settings["bits"],
                                              settings["strength"])
        except UnsupportedImageError as error:              # e.g. 1x1 for spread spectrum
            methods[shape] = error
    return methods


def detect_images(folder: Path, items: list[LoadedImage], key: SecretKey, settings: dict,
                  opts: dict, prepare: Optional[Prepare] = None,
                  methods: Optional[dict] = None) -> list[dict]:
    """One row per item (paths relative to ``folder``), in :data:`COLUMNS`.

    Images are tested in groups of one shape (C, H, W); ``prepare(shape, detector)`` runs on each
    group's detector before it tests (``madmark filter`` calibrates it there). ``methods``: from
    :func:`shape_methods`, computed here if not given."""
    rows = [{"path": it.rel, **it.row()} for it in items]
    methods = shape_methods(items, key, settings) if methods is None else methods
    for (c, h, w), idx in group_by_shape(items).items():
        method = methods[(c, h, w)]
        try:
            if isinstance(method, UnsupportedImageError):
                raise method
            detector = Detector(method, key, alpha=opts["alpha"], batch_size=opts["batch_size"])
            if prepare is not None:
                prepare((c, h, w), detector)
            result = detector(torch.stack([items[i].image for i in idx]))
        except UnsupportedImageError as error:             # e.g. DwtDct on a small image
            for i in idx:
                rows[i].update(status=SKIPPED, reason=skip_reason(error, settings["method"]))
            continue
        for j, i in enumerate(idx):
            rows[i].update(status="decoded", matched_bits=int(result.matched_bits[j]),
                           num_bits=method.num_bits,
                           bit_accuracy=f"{float(result.bit_accuracy[j]):.4f}",
                           p_value=f"{float(result.p_value[j]):.6g}",
                           flagged=bool(result.flagged[j]))
    return rows


def detect_folder(folder: Path, opts: dict) -> tuple[list[dict], FolderScan]:
    if not folder.is_dir():
        raise MadmarkError(f"folder {folder} does not exist", "pass a folder of images")
    check_alpha(opts["alpha"])
    key = secret_key(opts["key"], opts["key_file"])
    check_recorded_key(folder, key, opts)
    settings = method_settings(folder, opts)
    check_method(settings["method"], key, settings["bits"], settings["strength"])
    items, scan = read_folder(folder)
    return detect_images(folder, items, key, settings, opts), scan


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        print(text.__doc__)
        return 0
    try:
        opts = parse(args, ["dir"], OPTIONS, "detect")
        folder = Path(opts["dir"])
        given = text.given_options(args)
        modality = choose_modality(folder, opts["modality"])
        text.check_options(modality, given, "detect")
        if modality == "text":
            return text.detect_main(folder, opts, given, Path(opts["out"]) if opts["out"] else None)
        out = Path(opts["out"] or f"detect_{folder.resolve().name}.csv")
        if out.exists() or out.is_symlink():
            raise MadmarkError(f"{out} already exists (nothing is overwritten)",
                               "pass out=<new csv path>")
        rows, scan = detect_folder(folder, opts)
        try:
            atomic_write_text(out, rows_to_csv([{c: row.get(c, "") for c in COLUMNS}
                                                for row in rows]))
        except OSError as e:
            raise MadmarkError(f"cannot write {out} ({type(e).__name__}: {e.strerror or e})",
                               "pass out=<csv path in a folder you can write>") from e
    except MadmarkError as e:
        return report_error(e)
    report_problems(rows, "path", str(out))
    flagged = sum(bool(r.get("flagged")) for r in rows)
    decoded = sum(r["status"] == "decoded" for r in rows)
    unread = sum(r["status"] == UNREADABLE for r in rows)
    skipped = sum(r["status"] == SKIPPED for r in rows)
    listed = [f"{unread} unreadable"] * bool(unread) + [f"{skipped} skipped"] * bool(skipped) + \
        [f"not read: {scan.not_read()}"] * bool(scan.not_read())
    print(f"{flagged} of {decoded} decoded images flagged at alpha={opts['alpha']}"
          f"{' (' + '; '.join(listed) + ')' if listed else ''}; wrote {out}")
    return 0
