"""``madmark detect`` and ``madmark filter`` on text: .txt documents, or .jsonl lines.

    madmark detect docs/ tokenizer=<run>/tokenizer.json key_file=secret.txt [method=kgw ...]
    madmark detect docs.jsonl run=<text run folder> [key_file=...] [text_field=text]
    madmark filter docs/ run=<text run folder> out=<new folder>

The input (a folder of .txt / .jsonl files, one .txt, or one .jsonl; madmark/text_io.py says how
``modality=auto`` tells text from images and what each row's status means) is tokenized with the
tokenizer the text was generated with and each document is tested for the key's text watermark
(watermark/text/: KGW or EXP), each (context, token) window once per document (``dedup=document``,
or every position with ``dedup=none``, only to show why de-duplication matters).

Settings. ``tokenizer=<tokenizer.json>`` (``TextTokenizer.to_str()``, as a text run writes it;
``tokenizer=bytes`` for the byte tokenizer) and the method settings ``method=kgw|exp``, ``gamma``,
``delta``, ``context_width``, ``green_list``, ``test``, ``alpha`` as options; or ``run=<text run
folder>``: its ``tokenizer.json`` and the ``watermark:`` node of its ``config.yaml`` (``method``
kgw|exp, the fields under ``text:`` of configs/watermark/<method>.yaml, ``key_file``). An option given
overrides the run's value; a setting neither gives is the method's default. Where each setting
came from is recorded. The key: ``key_file=`` (or ``key=``), else the run's
``watermark.key_file``, else (a run without one) the run's experiment key, derived from its seed
and not secret (a note says so). The key is never printed or written: only its fingerprint.

``madmark detect`` writes ``out`` (default ``./detect_<input name>.csv``), one row per document:
path, line (.jsonl), status (scored|empty|unreadable|skipped), reason, num_tokens, num_scored (T,
the windows scored), score (KGW: green count; EXP: sum of -log(1 - r)), z, p_value, log10_p,
flagged, notes; and beside it ``<out stem>.corpus.json``: the settings, the counts, and the
corpus test, one test over all scored documents together with every window counted once in the
corpus (the radioactivity-style answer to "is this corpus marked?"). Neither file is overwritten.

``madmark filter`` writes a NEW folder ``out`` (default ``./filter_<input name>``; absent or
empty, else refused), under a temporary name renamed when complete:

    manifest.csv    detect's columns and decision (keep|flag|empty|unreadable|untested)
    kept.txt        the kept documents, one per line: path, or path:line for a .jsonl line
    flagged.txt     the flagged documents, the same way
    kept/ flagged/  copies of the kept / flagged .txt files (their bytes as read) and, for each
                    .jsonl, its kept / flagged lines byte for byte, at their relative paths; for
                    a single .jsonl input: kept.jsonl and flagged.jsonl instead
    summary.json    counts, settings and where each came from, the tokenizer (sha256), the corpus
                    test, the key's fingerprint (never the key)

``calibrate=<clean documents>`` (a folder, .txt or .jsonl of text known not to carry this key's
mark, e.g. your own human text): the flag becomes a conformal test against them, each document's
``p_calibrated`` = (1 + #{clean p ≤ its p}) / (n + 1) ≤ α, which holds α for text like the clean
set whatever one key does to a language's repeated windows (:func:`calibrate_flags`); it needs
n ≥ (1 − α) / α scored clean documents (99 at α = 0.01).

Empty, unreadable and skipped documents go in neither list (nothing certifies them clean), each
with its reason in the CSV and on stderr. Inputs are only read, never changed.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from madcore.errors import MadmarkError
from madcore.files import atomic_write_text
from madmark.data.tokenizer import BPETokenizer, TextTokenizer
from madmark.folder_io import (SKIPPED, UNREADABLE, check_output_folder, output_folder,
                               report_problems)
from madmark.methods import secret_key
from madmark.rundir import RunDir, rows_to_csv
from madmark.text_io import EMPTY, SCORED, TextDoc, check_exists, read_text_inputs, write_split
from madmark.watermarking import experiment_key
from watermark import SecretKey
from watermark.text import TEXT_WATERMARKS, TextWatermark

COLUMNS = ["path", "line", "status", "reason", "num_tokens", "num_scored", "score", "z",
           "p_value", "log10_p", "flagged", "notes"]
MANIFEST = [*COLUMNS, "p_calibrated", "decision"]
#: options that only text inputs take, and those only images take
TEXT_OPTIONS = ("tokenizer", "run", "text_field", "dedup", "gamma", "delta", "context_width",
                "green_list", "test")
IMAGE_OPTIONS = ("bits", "strength")
#: the per-document de-duplication modes (``corpus`` is the corpus test's, always run)
DOC_DEDUP = ("document", "none")
TOKENIZER_FIX = "pass tokenizer=<the tokenizer.json of the run that generated the text> or " \
                "run=<that text run's folder>"
_LN10 = math.log(10.0)


def given_options(args: list[str]) -> set[str]:
    """The ``key=value`` option names on the command line."""
    return {a.partition("=")[0] for a in args if "=" in a}


def check_options(modality: str, given: set[str], command: str) -> None:
    """Refuse the options of the other modality (they would be silently ignored)."""
    other, name = (IMAGE_OPTIONS, "image") if modality == "text" else (TEXT_OPTIONS, "text")
    wrong = [k for k in other if k in given]
    if wrong:
        named = ", ".join(k + "=" for k in wrong)
        one = f"is {'an' if name == 'image' else 'a'} {name} option"
        raise MadmarkError(f"{named} {one if len(wrong) == 1 else f'are {name} options'} of "
                           f"madmark {command}, and the input is read as {modality}",
                           f"drop {wrong[0]}=, or pass modality={name} to read the input as {name}")


def load_tokenizer(spec: str) -> tuple[TextTokenizer, dict]:
    """A tokenizer from ``tokenizer.json`` (BPE, or ``{"kind": "bytes"}``) or the word ``bytes``;
    with what identifies it (path, sha256, kind, vocab_size)."""
    if spec == "bytes":
        tok = TextTokenizer()
        return tok, {"path": None, "sha256": None, "kind": "bytes", "vocab_size": tok.vocab_size}
    path = Path(spec).expanduser()
    if not path.is_file():
        raise MadmarkError(f"tokenizer file {spec} does not exist", TOKENIZER_FIX)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
        record = json.loads(text)
        tok = (TextTokenizer() if isinstance(record, dict) and record.get("kind") == "bytes"
               else BPETokenizer.from_str(text))
    except Exception as e:    # OSError, UnicodeError, JSON, the tokenizers parser, no BOS id 0
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise MadmarkError(f"{spec} is not a madmark tokenizer.json ({first})",
                           TOKENIZER_FIX) from None
    return tok, {"path": str(path.resolve()), "sha256": hashlib.sha256(data).hexdigest(),
                 "kind": tok.kind, "vocab_size": tok.vocab_size}


def read_run(folder: str) -> tuple[dict, DictConfig]:
    """The ``watermark`` node (a dict) and the config of the text run ``folder``."""
    run = RunDir(Path(folder).expanduser())
    if not run.exists():
        raise MadmarkError(f"run={folder} is not a madmark run folder (no config.yaml)",
                           "pass run=<the folder of the text run that generated the documents>")
    cfg = run.read_config()
    node = cfg.get("watermark")
    record = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
    record = {**record, **(record.pop("text", None) or {})}   # the method's settings (text:)
    if record.get("method") not in TEXT_WATERMARKS:
        raise MadmarkError(f"{run.config_path} names no text watermark (watermark.method="
                           f"{record.get('method')}; text watermarks: "
                           f"{', '.join(TEXT_WATERMARKS)})",
                           "pass the folder of a text run marked with kgw or exp, or give "
                           "tokenizer= and method= instead of run=")
    return record, cfg


def check_run_key(run: Path, key: SecretKey) -> None:
    """Refuse a key other than the one the text run marked with (its results.csv records the
    fingerprint, ``wm_key_fingerprint``); ``other_key=true`` tests it anyway (a control)."""
    from madmark.rundir import read_csv

    try:
        rows = read_csv(run / "results.csv")
    except (OSError, ValueError):
        return                                  # no finished generation recorded: nothing to compare
    recorded = next((r.get("wm_key_fingerprint") for r in rows if r.get("wm_key_fingerprint")),
                    None)
    if recorded and recorded != key.fingerprint:
        raise MadmarkError(f"run {run} marked with key {recorded} but the key given is "
                           f"{key.fingerprint} (fingerprints)",
                           "give the key the run marked with (key_file=), or other_key=true to "
                           "test this key anyway")


@dataclass
class TextSetup:
    """What a text command tests with: the watermark (key inside), the tokenizer, and what to
    record about them (no key material)."""
    watermark: TextWatermark
    tokenizer: TextTokenizer
    key: SecretKey
    record: dict


def text_setup(source: Path, opts: dict, given: set[str]) -> TextSetup:
    """The tokenizer, method settings and key of a text command on ``source`` (module docstring:
    Settings)."""
    if opts["dedup"] not in DOC_DEDUP:
        raise MadmarkError(f"dedup={opts['dedup']} is not one of {', '.join(DOC_DEDUP)}",
                           "set dedup=document (each window once per document; the corpus test "
                           "always counts each once in the corpus)")
    recorded, cfg = read_run(opts["run"]) if opts["run"] else ({}, None)
    method = opts["method"] if "method" in given else recorded.get("method", "kgw")
    if method not in TEXT_WATERMARKS:
        raise MadmarkError(f"method={method} is not a text watermark",
                           f"use method= one of {', '.join(TEXT_WATERMARKS)}")
    cls, config_cls = TEXT_WATERMARKS[method]
    names = [f.name for f in fields(config_cls)]
    foreign = [k for k in ("gamma", "delta", "green_list", "test") if k in given and
               k not in names]
    if foreign:
        raise MadmarkError(f"{foreign[0]}= is not a setting of method={method} (its settings: "
                           f"{', '.join(names)})", f"drop {foreign[0]}=")
    settings, origin = {}, {"method": "option" if "method" in given else
                            "run" if "method" in recorded else "default"}
    for f in fields(config_cls):
        if f.name in given:
            settings[f.name], origin[f.name] = opts[f.name], "option"
        elif f.name in recorded:
            settings[f.name], origin[f.name] = recorded[f.name], "run"
        else:
            origin[f.name] = "default"
    config = config_cls(**settings)
    if not 0 < float(config.alpha) < 1:
        raise MadmarkError(f"alpha={config.alpha} is outside (0, 1)", "set alpha=0.01 or similar")

    if "tokenizer" in given:
        tok, tok_info = load_tokenizer(opts["tokenizer"])
    elif opts["run"]:
        path = Path(opts["run"]).expanduser() / "tokenizer.json"
        if not path.is_file():
            raise MadmarkError(f"run {opts['run']} has no tokenizer.json", TOKENIZER_FIX)
        tok, tok_info = load_tokenizer(str(path))
    elif source.is_dir() and opts["modality"] == "auto":     # the image commands' message too
        raise MadmarkError(f"no images found in {source}, only text (.txt/.jsonl), and testing "
                           "text needs the tokenizer it was generated with", TOKENIZER_FIX)
    else:
        raise MadmarkError("testing text needs the tokenizer the text was generated with",
                           TOKENIZER_FIX)

    if opts["key"] or opts["key_file"] or cfg is None:
        key = secret_key(opts["key"], opts["key_file"])
        key_source = "key_file" if opts["key_file"] else "key"
    elif recorded.get("key_file"):
        key, key_source = secret_key("", str(recorded["key_file"])), "the run's watermark.key_file"
    else:
        key, key_source = experiment_key(int(cfg.get("seed", 0))), \
            f"the run's experiment key (seed={int(cfg.get('seed', 0))}; not secret)"
        print(f"note: run {opts['run']} has no watermark.key_file: testing its experiment key, "
              "derived from its seed (not secret)", file=sys.stderr)
    if opts["run"] and not opts.get("other_key"):
        check_run_key(Path(opts["run"]).expanduser(), key)
    try:
        wm = cls(key, tok.vocab_size, config)
    except ValueError as e:
        raise MadmarkError(f"method={method}: {e}", "change that setting") from None
    record = {"method": method, "settings": {f.name: getattr(config, f.name)
                                             for f in fields(config_cls)},
              "settings_from": origin,
              "run": None if not opts["run"] else str(Path(opts["run"]).resolve()),
              "tokenizer": tok_info, "key_fingerprint": key.fingerprint, "key_source": key_source,
              "dedup": opts["dedup"]}
    return TextSetup(wm, tok, key, record)


def _fmt(value: float, digits: int = 6) -> str:
    return f"{value:.{digits}g}"


def score_documents(docs: list[TextDoc], setup: TextSetup, dedup: str, batch_size: int,
                    corpus_test: bool = True) -> tuple[list[dict], dict]:
    """One row per document (:data:`COLUMNS`) and the corpus test over the scored ones (not run
    with ``corpus_test=False``: the record then holds the counts only)."""
    rows = [{**d.row(), "where": d.where} for d in docs]
    todo = [i for i, d in enumerate(docs) if d.text is not None]
    encoded = setup.tokenizer.encode([docs[i].text for i in todo])
    seqs: dict[int, torch.Tensor] = {}
    for i, ids in zip(todo, encoded):
        rows[i]["num_tokens"] = len(ids)
        if len(ids) == 0:
            rows[i].update(status=EMPTY, reason="no tokens")
        else:
            seqs[i] = torch.from_numpy(ids)
    order = sorted(seqs, key=lambda i: len(seqs[i]))     # similar lengths pad little
    wm = setup.watermark
    for start in range(0, len(order), max(1, batch_size)):
        chunk = order[start:start + max(1, batch_size)]
        res = wm.score([seqs[i] for i in chunk], dedup=dedup)
        for j, i in enumerate(chunk):
            rows[i].update(status=SCORED, num_scored=int(res.num_scored[j]),
                           score=_fmt(float(res.score[j]), 10), z=f"{float(res.z[j]):.4f}",
                           p_value=_fmt(float(res.p_value[j])),
                           log10_p=f"{float(res.log_p[j]) / _LN10:.4f}",
                           flagged=bool(res.flagged[j]), _log_p=float(res.log_p[j]))
    scored = [seqs[i] for i in sorted(seqs)]
    corpus: dict[str, Any] = {"n_documents": len(scored), "dedup": "corpus", "alpha": wm.alpha}
    if scored and corpus_test:
        pooled = wm.pooled(wm.score(scored, dedup="corpus"))
        corpus.update(num_scored=int(pooled.num_scored[0]), score=float(pooled.score[0]),
                      z=float(pooled.z[0]), p_value=float(pooled.p_value[0]),
                      log10_p=float(pooled.log_p[0]) / _LN10, flagged=bool(pooled.flagged[0]))
    return rows, corpus


def counts(rows: list[dict]) -> dict[str, int]:
    return {"n_rows": len(rows), "n_scored": sum(r["status"] == SCORED for r in rows),
            "n_flagged": sum(r.get("flagged") is True for r in rows),
            "n_empty": sum(r["status"] == EMPTY for r in rows),
            "n_unreadable": sum(r["status"] == UNREADABLE for r in rows),
            "n_skipped": sum(r["status"] == SKIPPED for r in rows)}


def corpus_line(corpus: dict) -> str:
    if not corpus["n_documents"]:
        return "corpus test: no scored documents"
    p = f"{corpus['p_value']:.3g}" if corpus["p_value"] > 0 else f"10^{corpus['log10_p']:.1f}"
    verdict = "flagged" if corpus["flagged"] else "not flagged"
    return (f"corpus test over {corpus['n_documents']} scored documents "
            f"({corpus['num_scored']} windows, each once in the corpus): z={corpus['z']:.2f}, "
            f"p={p}, {verdict} at alpha={corpus['alpha']}")


def problems_listed(c: dict, not_read: str, untested: str = "skipped") -> str:
    parts = [f"{c['n_empty']} empty"] * bool(c["n_empty"]) + \
        [f"{c['n_unreadable']} unreadable"] * bool(c["n_unreadable"]) + \
        [f"{c['n_skipped']} {untested} (not .txt/.jsonl)"] * bool(c["n_skipped"]) + \
        [f"not read: {not_read}"] * bool(not_read)
    return ", ".join(parts)


def corpus_path(out: Path) -> Path:
    """Where detect's corpus JSON goes: ``x.csv`` -> ``x.corpus.json``."""
    return out.with_name((out.stem if out.suffix == ".csv" else out.name) + ".corpus.json")


def _csv(rows: list[dict], columns: list[str]) -> str:
    return rows_to_csv([{c: r.get(c, "") for c in columns} for r in rows])


def detect_main(source: Path, opts: dict, given: set[str], out: Optional[Path]) -> int:
    """``madmark detect`` on text; MadmarkErrors are the caller's to report."""
    out = out or Path(f"detect_{source.resolve().name}.csv")
    corpus_out = corpus_path(out)
    for path in (out, corpus_out):
        if path.exists() or path.is_symlink():
            raise MadmarkError(f"{path} already exists (nothing is overwritten)",
                               "pass out=<new csv path>")
    check_exists(source)
    setup = text_setup(source, opts, given)
    docs, scan = read_text_inputs(source, opts["text_field"])
    rows, corpus = score_documents(docs, setup, opts["dedup"], opts["batch_size"])
    c = counts(rows)
    record = {"input": str(source.resolve()), "modality": "text", **c,
              "n_hidden_not_read": scan.hidden, "alpha": setup.watermark.alpha, **setup.record,
              "corpus_test": corpus, "csv": str(out)}
    try:
        atomic_write_text(out, _csv(rows, COLUMNS))
        atomic_write_text(corpus_out, json.dumps(record, indent=2) + "\n")
    except OSError as e:
        raise MadmarkError(f"cannot write {out} ({type(e).__name__}: {e.strerror or e})",
                           "pass out=<csv path in a folder you can write>") from e
    report_problems(rows, "where", str(out), (SKIPPED, UNREADABLE, EMPTY))
    listed = problems_listed(c, scan.not_read())
    print(f"{c['n_flagged']} of {c['n_scored']} scored documents flagged at "
          f"alpha={setup.watermark.alpha}{' (' + listed + ')' if listed else ''}; wrote {out}")
    print(f"{corpus_line(corpus)}; wrote {corpus_out}")
    return 0


def _write(path: Path, data: bytes) -> None:
    """A file inside filter's temporary folder (atomic_directory fsyncs it before the rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as f:
        f.write(data)


def decision(row: dict) -> str:
    return {SCORED: "flag" if row.get("flagged") is True else "keep", EMPTY: "empty",
            UNREADABLE: "unreadable", SKIPPED: "untested"}[row["status"]]


def calibrate_flags(rows: list[dict], clean_dir: str, setup: TextSetup, opts: dict) -> dict:
    """Re-flag the scored ``rows`` against known-clean documents (``calibrate=<folder or
    .jsonl>``): each document's conformal p-value ``(1 + #{clean p ≤ p}) / (n + 1)`` over the n
    scored clean documents, flagged when it is ≤ α. For clean documents exchangeable with the
    calibration set the false-positive rate is then at most α whatever the key does to this
    language's windows (one key does not hold α on real text: docs/findings.md). Returns the
    calibration's record for summary.json."""
    import bisect

    source = Path(clean_dir).expanduser()
    docs, scan = read_text_inputs(source, opts["text_field"])
    clean, _ = score_documents(docs, setup, opts["dedup"], opts["batch_size"], corpus_test=False)
    logp = sorted(r["_log_p"] for r in clean if r["status"] == SCORED)
    alpha, n = setup.watermark.alpha, len(logp)
    need = math.ceil((1 - alpha) / alpha)            # floor(α (n + 1)) >= 1
    if n < need:
        raise MadmarkError(f"calibrate={clean_dir} has {n} scored documents; at alpha={alpha} "
                           f"the calibration needs at least {need}",
                           "add clean documents to the calibration folder, or raise alpha")
    for row in rows:
        if row["status"] == SCORED:
            rank = bisect.bisect_right(logp, row["_log_p"])      # clean p <= this p
            p_cal = (1 + rank) / (n + 1)
            row.update(p_calibrated=_fmt(p_cal), flagged=p_cal <= alpha)
    analytic = sum(lp <= math.log(alpha) for lp in logp)
    return {"input": str(source.resolve()), "n_documents": len(clean), "n_scored": n,
            "n_not_scored": len(clean) - n, "n_hidden_not_read": scan.hidden,
            "clean_flag_rate_uncalibrated": analytic / n,
            "rule": "conformal: p_calibrated = (1 + #{clean p <= p}) / (n + 1), flagged when "
                    "p_calibrated <= alpha"}


def filter_main(source: Path, opts: dict, given: set[str], out: Optional[Path]) -> int:
    """``madmark filter`` on text; MadmarkErrors are the caller's to report."""
    out = out or Path(f"filter_{source.resolve().name}")
    check_output_folder(out, source, "input", "out=<folder>")
    check_exists(source)
    setup = text_setup(source, opts, given)
    docs, scan = read_text_inputs(source, opts["text_field"])
    rows, corpus = score_documents(docs, setup, opts["dedup"], opts["batch_size"])
    calibration = calibrate_flags(rows, opts["calibrate"], setup, opts) if opts.get(
        "calibrate") else None
    for row in rows:
        row["decision"] = decision(row)
    single_jsonl = not source.is_dir() and source.suffix.lower() == ".jsonl"
    c = counts(rows)
    summary = {"input": str(source.resolve()),
               "paths_relative_to": "input" if source.is_dir() else "the input's folder",
               "modality": "text", "n_files": len({d.rel for d in docs}), "n_documents": len(rows),
               "n_scored": c["n_scored"], "n_kept": sum(r["decision"] == "keep" for r in rows),
               "n_flagged": c["n_flagged"], "n_empty": c["n_empty"],
               "n_unreadable": c["n_unreadable"], "n_untested": c["n_skipped"],
               "n_hidden_not_read": scan.hidden, "alpha": setup.watermark.alpha,
               **setup.record, "corpus_test": corpus, "calibration": calibration,
               "documents": {"kept": "kept.jsonl" if single_jsonl else "kept/",
                             "flagged": "flagged.jsonl" if single_jsonl else "flagged/"}}
    with output_folder(out) as tmp:
        atomic_write_text(tmp / "manifest.csv", _csv(rows, MANIFEST))
        for name, want in (("kept.txt", "keep"), ("flagged.txt", "flag")):
            atomic_write_text(tmp / name, "".join(f"{r['where']}\n" for r in rows
                                                  if r["decision"] == want))
        write_split(tmp, docs, [r["decision"] for r in rows], single_jsonl, _write)
        atomic_write_text(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")
    report_problems(rows, "where", f"{out}/manifest.csv", (SKIPPED, UNREADABLE, EMPTY))
    listed = problems_listed(c, scan.not_read(), "untested")
    cal = f", calibrated on {calibration['n_scored']} clean documents" if calibration else ""
    print(f"kept {summary['n_kept']}, flagged {summary['n_flagged']} of {c['n_scored']} scored "
          f"documents (alpha={setup.watermark.alpha}{cal}"
          f"{'; ' + listed + ', see manifest.csv' if listed else ''}); wrote {out}")
    print(corpus_line(corpus))
    return 0
