"""``madmark embed <in_dir> <out_dir> key_file=... [method=spread_spectrum bits=32 strength=0.01]``

Watermarks every image under ``in_dir`` into a NEW folder ``out_dir`` (absent or empty) as
lossless 8-bit PNGs: each output keeps the input's relative path, with ``.png`` appended unless the
name already ends in ``.png`` (``a.png`` -> ``a.png``, ``a.jpg`` -> ``a.jpg.png``); two inputs that
would share an output are refused before anything is written. Transparency is copied to the
output unchanged. Also writes ``out_dir/manifest.csv`` (one row per input file: input, output,
status embedded|skipped|unreadable, reason, PSNR, notes such as "alpha kept apart" or "16-bit")
and ``out_dir/watermark.json`` (method, bits, strength, counts, key fingerprint — never the key).

Every file under ``in_dir`` is listed: files that are not images Pillow can decode are
"unreadable", images the method cannot mark at their size (below spread spectrum's minimum,
DwtDct below 256 x 256 or grey) are "skipped"; both with the reason, and on stderr. Hidden
entries are not read and are counted. Inputs are only read. The folder is written beside
``out_dir`` under a temporary name and renamed when complete: a failed run leaves no output.
"""
from __future__ import annotations

from pathlib import Path

import torch

from madcore.errors import MadmarkError
from madcore.files import atomic_directory, atomic_write_json, atomic_write_text
from madcore.images import write_png
from madmark.commands.options import EmbedOptions, parse
from madmark.folder_io import (SKIPPED, UNREADABLE, check_output_folder, check_outputs,
                               group_by_shape, output_name, read_folder, report_problems)
from madmark.hydra_app import report_error
from madmark.methods import check_method, method_for_shape, secret_key, skip_reason
from madmark.rundir import rows_to_csv
from watermark import UnsupportedImageError, psnr

OPTIONS = EmbedOptions
COLUMNS = ["input", "output", "status", "reason", "psnr_db", "notes"]


def embed_notes(item) -> str:
    """The reader's notes, and what the output does with them."""
    said = {"16-bit": "16-bit (written as 8-bit)",
            "alpha kept apart": "alpha kept apart (copied to the output unchanged)",
            "EXIF-rotated": "EXIF-rotated (written upright)"}
    notes = [said.get(n, n) for n in item.notes]
    return "; ".join(f"{n} (the output is the first frame)" if n.startswith("animated") else n
                     for n in notes)


def embed_folder(in_dir: Path, out_dir: Path, opts: dict) -> dict:
    if not in_dir.is_dir():
        raise MadmarkError(f"input folder {in_dir} does not exist", "pass a folder of images")
    check_output_folder(out_dir, in_dir)
    key = secret_key(opts["key"], opts["key_file"])
    check_method(opts["method"], key, opts["bits"], opts["strength"])
    items, scan = read_folder(in_dir, "input folder")
    rows = [{"input": it.rel, "output": "", **it.row(), "psnr_db": ""} for it in items]
    for it, row in zip(items, rows):
        row["notes"] = embed_notes(it) if it.image is not None else row["notes"]
    outputs = {it.rel: output_name(it.rel) for it in items if it.image is not None}
    check_outputs(outputs)

    def skip(indices: list[int], error: UnsupportedImageError) -> None:
        for i in indices:
            rows[i].update(status=SKIPPED, reason=skip_reason(error, opts["method"]))

    try:
        with atomic_directory(out_dir, empty_ok=True) as tmp:
            for shape, idx in group_by_shape(items).items():
                try:
                    method = method_for_shape(opts["method"], key, shape, opts["bits"],
                                              opts["strength"])
                except UnsupportedImageError as error:        # e.g. 1x1 for spread spectrum
                    skip(idx, error)
                    continue
                message = key.message(method.num_bits)
                for start in range(0, len(idx), opts["batch_size"]):
                    chunk = idx[start:start + opts["batch_size"]]
                    x = torch.stack([items[i].image for i in chunk])
                    try:
                        x_w = method.embed(x, message.expand(len(chunk), -1))
                    except UnsupportedImageError as error:     # e.g. DwtDct on a small image
                        skip(chunk, error)
                        continue
                    quality = psnr(x_w, x)
                    for j, i in enumerate(chunk):
                        out = outputs[items[i].rel]
                        write_png(tmp / out, x_w[j], alpha=items[i].alpha)  # transparency kept
                        rows[i].update(output=out, status="embedded",
                                       psnr_db=f"{float(quality[j]):.2f}")
            status = [r["status"] for r in rows]
            info = {"method": opts["method"], "bits": opts["bits"], "strength": opts["strength"],
                    "key_fingerprint": key.fingerprint,
                    "outputs": "input path, plus .png unless it ends in .png",
                    "n_files": len(rows), "n_embedded": status.count("embedded"),
                    "n_unreadable": status.count(UNREADABLE), "n_skipped": status.count(SKIPPED),
                    "n_hidden_not_read": scan.hidden}
            atomic_write_text(tmp / "manifest.csv", rows_to_csv(
                {c: r.get(c, "") for c in COLUMNS} for r in rows))
            atomic_write_json(tmp / "watermark.json", info)      # last: marks a finished folder
    except FileExistsError:                 # filled between the check and the start
        raise MadmarkError(f"output folder {out_dir} already exists and is not empty (nothing "
                           "is overwritten)", "pass an output folder that is new or empty"
                           ) from None
    except OSError as e:
        raise MadmarkError(f"cannot write output folder {out_dir} ({type(e).__name__}: "
                           f"{e.strerror or e}); nothing was left behind",
                           "check the free space and permissions where it goes") from e
    return {**info, "rows": rows, "not_read": scan.not_read()}


def main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        opts = parse(args, ["in_dir", "out_dir"], OPTIONS, "embed")
        result = embed_folder(Path(opts["in_dir"]), Path(opts["out_dir"]), opts)
    except MadmarkError as e:
        return report_error(e)
    report_problems(result["rows"], "input", f"{opts['out_dir']}/manifest.csv")
    not_read = f"; not read: {result['not_read']}" if result["not_read"] else ""
    print(f"embedded {result['n_embedded']} images into {opts['out_dir']} "
          f"({result['n_unreadable']} unreadable, {result['n_skipped']} not markable by "
          f"{opts['method']}{not_read}; listed in manifest.csv)")
    return 0
