"""madmark detect / filter on text: real marked documents from a BPE + n-gram model.

The corpus is Python's own documentation (``pydoc_data.topics``); a BPE of 512 ids is trained on
it, a trigram Kneser-Ney model fitted on its 32-token windows, and documents sampled from it with
the KGW chooser (marked) and without (unmarked), decoded to text files and a .jsonl: the text a
practitioner would have. Detection re-encodes the text, which need not give back the sampled ids
(BPE: the sampled ids need not be the canonical encoding of their text):
test_the_text_round_trip_keeps_detection measures that.
"""
import csv
import json
import os

import pytest
import torch
from PIL import Image

from madmark.cli import main

SECRET = "text-cmds-secret-9c41"     # must appear in no output
N_DOCS, LENGTH = 24, 80


def one_line_error(err):
    assert err.startswith("madmark: error: ") and " — " in err, err
    assert len(err.strip().splitlines()) == 1, err


def snapshot(root):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def rows_of(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """docs/ (marked/m*.txt, clean/c*.txt), docs.jsonl (the same texts, marked first), a text
    run folder (tokenizer.json, config.yaml) and the key file; the sampled ids too."""
    from pydoc_data.topics import topics

    from loops.models.ngram import NGramModel
    from madmark.data.text_source import windows
    from madmark.data.tokenizer import BPETokenizer
    from watermark.text import KGW

    base = tmp_path_factory.mktemp("text")
    texts = [topics[k] for k in sorted(topics)]
    tok = BPETokenizer.train(texts, 512)
    model = NGramModel(order=3, vocab_size=tok.vocab_size)
    model.fit(windows(tok.encode(texts), 32), torch.Generator().manual_seed(0))
    wm = KGW(SECRET, tok.vocab_size)
    g = torch.Generator().manual_seed(1)
    marked_ids = model.sample(N_DOCS, chooser=wm, generator=g, length=LENGTH)
    clean_ids = model.sample(N_DOCS, generator=g, length=LENGTH)
    marked, clean = tok.decode(marked_ids), tok.decode(clean_ids)
    docs = base / "docs"
    for folder, prefix, group in (("marked", "m", marked), ("clean", "c", clean)):
        (docs / folder).mkdir(parents=True)
        for i, t in enumerate(group):
            (docs / folder / f"{prefix}{i:02d}.txt").write_text(t, encoding="utf-8")
    jsonl = base / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                             for i, t in enumerate(marked + clean)), encoding="utf-8")
    key_file = base / "key.txt"
    key_file.write_text(SECRET + "\n")
    run = base / "run"
    run.mkdir()
    (run / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    (run / "config.yaml").write_text(
        "seed: 0\nwatermark:\n  method: kgw\n  gamma: 0.25\n  delta: 2.0\n  context_width: 1\n"
        f"  green_list: exact\n  test: binomial\n  alpha: 0.01\n  key_file: {key_file}\n")
    return {"base": base, "docs": docs, "jsonl": jsonl, "key_file": key_file, "run": run,
            "tokenizer": run / "tokenizer.json", "tok": tok, "wm": wm,
            "marked_ids": marked_ids, "clean_ids": clean_ids}


def outputs_text(*paths):
    """Every byte written under ``paths`` (files or folders), as text."""
    out = []
    for p in paths:
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        out += [f.read_bytes().decode("utf-8", "replace") for f in files]
    return "\n".join(out)


def test_detect_flags_the_marked_documents(corpus, tmp_path, capsys):
    docs, before = corpus["docs"], snapshot(corpus["docs"])
    out = tmp_path / "det.csv"
    code = main(["detect", str(docs), f"tokenizer={corpus['tokenizer']}",
                 f"key_file={corpus['key_file']}", f"out={out}"])
    std = capsys.readouterr()
    assert code == 0, std.err
    assert snapshot(docs) == before
    rows = rows_of(out)
    assert len(rows) == 2 * N_DOCS and {r["status"] for r in rows} == {"scored"}
    tpr = sum(r["flagged"] == "True" for r in rows if r["path"].startswith("marked/")) / N_DOCS
    fpr = sum(r["flagged"] == "True" for r in rows if r["path"].startswith("clean/")) / N_DOCS
    assert tpr >= 0.95 and fpr <= 1 / N_DOCS, (tpr, fpr)       # measured: 1.0 and 0.0
    assert all(int(r["num_tokens"]) > 0 and 0 < int(r["num_scored"]) <= int(r["num_tokens"])
               for r in rows)
    corpus_json = json.loads((tmp_path / "det.corpus.json").read_text())
    assert corpus_json["corpus_test"]["flagged"] and corpus_json["corpus_test"]["log10_p"] < -20
    assert corpus_json["key_fingerprint"] == corpus["wm"].key.fingerprint
    assert corpus_json["settings_from"]["gamma"] == "default"
    assert f"{round(tpr * N_DOCS)} of {2 * N_DOCS} scored documents flagged" in std.out
    assert "corpus test over 48 scored documents" in std.out
    assert SECRET not in std.out + std.err + outputs_text(out, tmp_path / "det.corpus.json")

    # the unmarked half alone: the corpus test does not flag it either
    clean_out = tmp_path / "clean.csv"
    assert main(["detect", str(docs / "clean"), f"tokenizer={corpus['tokenizer']}",
                 f"key_file={corpus['key_file']}", f"out={clean_out}"]) == 0
    assert not json.loads((tmp_path / "clean.corpus.json").read_text())["corpus_test"]["flagged"]
    capsys.readouterr()
    # the wrong key: chance only
    other = tmp_path / "other.txt"
    other.write_text("another key")
    wrong_out = tmp_path / "wrong.csv"
    assert main(["detect", str(docs / "marked"), f"tokenizer={corpus['tokenizer']}",
                 f"key_file={other}", f"out={wrong_out}"]) == 0
    assert sum(r["flagged"] == "True" for r in rows_of(wrong_out)) <= 1
    assert not json.loads((tmp_path / "wrong.corpus.json").read_text())["corpus_test"]["flagged"]


def test_detect_a_jsonl_with_the_run_settings_and_bad_lines(corpus, tmp_path, capsys):
    jsonl = tmp_path / "mixed.jsonl"
    good = corpus["jsonl"].read_bytes()
    jsonl.write_bytes(good + b'not json\n{"body": "no text field"}\n\n{"text": "   "}\n'
                      b'{"text": "caf\xc3\xa9"}\r\n\xff\xfe\n')
    before = jsonl.read_bytes()
    out = tmp_path / "j.csv"
    code = main(["detect", str(jsonl), f"run={corpus['run']}", "alpha=0.001", f"out={out}"])
    std = capsys.readouterr()
    assert code == 0, std.err
    assert jsonl.read_bytes() == before
    rows = rows_of(out)
    by_line = {int(r["line"]): r for r in rows}
    n = 2 * N_DOCS
    assert sorted(by_line) == [*range(1, n + 3), n + 4, n + 5, n + 6]   # the blank line: no row
    assert by_line[n + 1]["status"] == "unreadable" and "not JSON" in by_line[n + 1]["reason"]
    assert "no string field 'text'" in by_line[n + 2]["reason"]
    assert by_line[n + 4]["status"] == "empty"
    assert by_line[n + 5]["status"] == "scored"                  # CRLF line end is fine
    assert by_line[n + 6]["status"] == "unreadable" and "UTF-8" in by_line[n + 6]["reason"]
    for line in (n + 1, n + 2, n + 4, n + 6):
        assert f"mixed.jsonl:{line}: " in std.err
    flagged = [r["flagged"] == "True" for r in rows[:n]]
    assert sum(flagged[:N_DOCS]) >= 0.9 * N_DOCS and sum(flagged[N_DOCS:]) <= 1
    record = json.loads((tmp_path / "j.corpus.json").read_text())
    assert record["settings_from"]["alpha"] == "option" and record["alpha"] == 0.001
    assert record["settings_from"]["gamma"] == "run"
    assert record["key_source"] == "the run's watermark.key_file"
    assert record["n_unreadable"] == 3 and record["n_empty"] == 1
    assert SECRET not in std.out + std.err + outputs_text(out, tmp_path / "j.corpus.json")


def test_filter_splits_text_and_never_overwrites(corpus, tmp_path, capsys):
    docs, before = corpus["docs"], snapshot(corpus["docs"])
    out = tmp_path / "filtered"
    args = ["filter", str(docs), f"tokenizer={corpus['tokenizer']}",
            f"key_file={corpus['key_file']}", f"out={out}"]
    code = main(args)
    std = capsys.readouterr()
    assert code == 0, std.err
    assert snapshot(docs) == before
    manifest = rows_of(out / "manifest.csv")
    flagged = (out / "flagged.txt").read_text().splitlines()
    kept = (out / "kept.txt").read_text().splitlines()
    assert set(flagged) == {r["path"] for r in manifest if r["decision"] == "flag"}
    assert set(kept) | set(flagged) == {r["path"] for r in manifest}
    assert not set(kept) & set(flagged)
    assert sum(p.startswith("marked/") for p in flagged) >= 0.95 * N_DOCS
    assert sum(p.startswith("clean/") for p in flagged) <= 1
    for name, folder in ((kept, "kept"), (flagged, "flagged")):
        copies = {p.relative_to(out / folder).as_posix() for p in (out / folder).rglob("*.txt")}
        assert copies == set(name)
        assert all((out / folder / p).read_bytes() == (docs / p).read_bytes() for p in name)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_kept"] == len(kept) and summary["n_flagged"] == len(flagged)
    assert summary["corpus_test"]["flagged"]
    assert SECRET not in std.out + std.err + outputs_text(out)

    # a rerun into the same folder is refused, in one line, and changes nothing
    written = snapshot(out)
    assert main(args) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "not empty" in err and snapshot(out) == written


def test_filter_calibrated_on_clean_text_uses_conformal_p_values(corpus, tmp_path, capsys):
    """calibrate=<clean documents>: each scored document's p_calibrated is (1 + the clean
    documents with p at most its p) / (n + 1), and it is flagged when that is at most alpha."""
    from pydoc_data.topics import topics

    clean = tmp_path / "clean_text"
    clean.mkdir()
    texts = [topics[k] for k in sorted(topics)][:40]
    for i, t in enumerate(texts):
        (clean / f"h{i:02d}.txt").write_text(t, encoding="utf-8")
    out = tmp_path / "calibrated"
    base = ["filter", str(corpus["docs"]), f"tokenizer={corpus['tokenizer']}",
            f"key_file={corpus['key_file']}", "alpha=0.05"]
    assert main([*base, f"out={out}", f"calibrate={clean}"]) == 0, capsys.readouterr().err
    assert "calibrated on 40 clean documents" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["calibration"]["n_scored"] == 40
    detected = tmp_path / "clean.csv"
    assert main(["detect", str(clean), f"tokenizer={corpus['tokenizer']}",
                 f"key_file={corpus['key_file']}", f"out={detected}"]) == 0
    clean_p = [float(r["p_value"]) for r in rows_of(detected)]
    for row in rows_of(out / "manifest.csv"):
        p = float(row["p_value"])
        expected = (1 + sum(q <= p for q in clean_p)) / 41
        assert float(row["p_calibrated"]) == pytest.approx(expected, rel=1e-5)
        assert (row["decision"] == "flag") == (expected <= 0.05)
    flagged = (out / "flagged.txt").read_text().splitlines()
    assert sum(p.startswith("marked/") for p in flagged) >= 0.9 * N_DOCS
    # too few clean documents for alpha: one line, nothing written
    capsys.readouterr()
    assert main([*base, f"out={tmp_path / 'few'}", "alpha=0.01", f"calibrate={clean}"]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "needs at least 99" in err and not (tmp_path / "few").exists()


def test_filter_a_jsonl_keeps_its_lines_byte_for_byte(corpus, tmp_path, capsys):
    jsonl = tmp_path / "in.jsonl"
    lines = corpus["jsonl"].read_bytes().split(b"\n")[:-1]
    lines[3] = lines[3] + b"\r"                                   # a CRLF line stays CRLF
    jsonl.write_bytes(b"\n".join(lines) + b"\nbroken {\n")
    before = jsonl.read_bytes()
    out = tmp_path / "f"
    code = main(["filter", str(jsonl), f"run={corpus['run']}", f"out={out}"])
    std = capsys.readouterr()
    assert code == 0, std.err
    assert jsonl.read_bytes() == before
    kept = (out / "kept.jsonl").read_bytes().split(b"\n")[:-1]
    flagged = (out / "flagged.jsonl").read_bytes().split(b"\n")[:-1]
    assert sorted(kept + flagged) == sorted(lines)               # every good line, unchanged
    assert sum(line in flagged for line in lines[:N_DOCS]) >= 0.95 * N_DOCS
    assert sum(line in flagged for line in lines[N_DOCS:]) <= 1
    listed = (out / "flagged.txt").read_text().splitlines()
    assert len(listed) == len(flagged) and all(e.startswith("in.jsonl:") for e in listed)
    assert "unreadable in.jsonl:49: not JSON" in std.err
    assert "in.jsonl:49" not in (out / "kept.txt").read_text() + "\n".join(listed)
    assert SECRET not in std.out + std.err + outputs_text(out)


def test_bad_files_are_listed_with_their_reasons(corpus, tmp_path, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    good = (corpus["docs"] / "marked" / "m00.txt").read_bytes()
    (root / "good.txt").write_bytes(good)
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.txt").write_text(" \n\n\t")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (root / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (root / "notes.md").write_text("not a text document of the corpus")
    (root / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    (root / ".hidden.txt").write_text("hidden")
    out = tmp_path / "bad.csv"
    code = main(["detect", str(root), "modality=text", f"tokenizer={corpus['tokenizer']}",
                 f"key_file={corpus['key_file']}", f"out={out}"])
    std = capsys.readouterr()
    assert code == 0, std.err
    rows = {r["path"]: r for r in rows_of(out)}
    expected = {"good.txt": ("scored", ""), "empty.txt": ("empty", "0 bytes"),
                "blank.txt": ("empty", "only whitespace"),
                "latin1.txt": ("unreadable", "not UTF-8"), "binary.txt": ("unreadable", "NUL"),
                "notes.md": ("skipped", "not a .txt or .jsonl"),
                "gone.txt": ("unreadable", "dangling symlink")}
    assert set(rows) == set(expected)
    for name, (status, reason) in expected.items():
        assert rows[name]["status"] == status and reason in rows[name]["reason"], rows[name]
        if status != "scored":
            assert f"{status} {name}: " in std.err
    assert rows["good.txt"]["flagged"] == "True"
    assert "1 hidden entry" in std.out


def test_a_mixed_folder_is_images_unless_modality_text(corpus, tmp_path, capsys):
    root = tmp_path / "mixed"
    root.mkdir()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(root / "photo.png")
    (root / "doc.txt").write_bytes((corpus["docs"] / "marked" / "m01.txt").read_bytes())
    image_csv, text_csv = tmp_path / "img.csv", tmp_path / "txt.csv"
    assert main(["detect", str(root), f"key_file={corpus['key_file']}", f"out={image_csv}"]) == 0
    rows = {r["path"]: r for r in rows_of(image_csv)}
    assert rows["photo.png"]["status"] == "decoded" and rows["doc.txt"]["status"] == "unreadable"
    capsys.readouterr()
    # a text option on what is read as images is refused rather than ignored
    assert main(["detect", str(root), f"key_file={corpus['key_file']}",
                 f"tokenizer={corpus['tokenizer']}", f"out={tmp_path / 'x.csv'}"]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "modality=text" in err
    assert main(["detect", str(root), "modality=text", f"tokenizer={corpus['tokenizer']}",
                 f"key_file={corpus['key_file']}", f"out={text_csv}"]) == 0
    rows = {r["path"]: r for r in rows_of(text_csv)}
    assert rows["photo.png"]["status"] == "skipped" and rows["doc.txt"]["flagged"] == "True"


BAD = {
    "no tokenizer": ([], "needs the tokenizer"),
    "missing tokenizer": (["tokenizer={base}/nope.json"], "does not exist"),
    "not a tokenizer": (["tokenizer={base}/key.txt"], "is not a madmark tokenizer.json"),
    "missing key file": (["tokenizer={tok}", "key_file={base}/no-key"], "cannot read key_file"),
    "unknown method": (["tokenizer={tok}", "method=spread_spectrum"], "not a text watermark"),
    "gamma for exp": (["tokenizer={tok}", "method=exp", "gamma=0.5"], "not a setting of"),
    "bad gamma": (["tokenizer={tok}", "gamma=1.5"], "gamma must lie in (0, 1)"),
    "bad dedup": (["tokenizer={tok}", "dedup=corpus"], "dedup=corpus is not one of"),
    "image option": (["tokenizer={tok}", "bits=8"], "image option"),
    "run not a run": (["run={base}"], "not a madmark run folder"),
}


@pytest.mark.parametrize("command", ["detect", "filter"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_settings_are_one_line_and_write_nothing(corpus, tmp_path, capsys, command, case):
    extra, problem = BAD[case]
    fill = {"base": corpus["base"], "tok": corpus["tokenizer"]}
    args = [a.format(**fill) for a in extra]
    if not any(a.startswith("key_file=") for a in args):
        args.append(f"key_file={corpus['key_file']}")
    out = tmp_path / "out"
    code = main([command, str(corpus["docs"]), *args, f"out={out}"])
    err = capsys.readouterr().err
    assert code == 2
    one_line_error(err)
    assert problem in err and SECRET not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_no_document_and_an_existing_csv_are_one_line(corpus, tmp_path, capsys):
    root = tmp_path / "nothing"
    root.mkdir()
    (root / "a.txt").write_bytes(b"")
    key = f"key_file={corpus['key_file']}"
    assert main(["detect", str(root), "modality=text", f"tokenizer={corpus['tokenizer']}", key,
                 f"out={tmp_path / 'n.csv'}"]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "no text documents found" in err and "1 empty" in err
    assert main(["detect", str(tmp_path / "missing.jsonl"), key, f"out={tmp_path / 'm.csv'}"]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "missing.jsonl does not exist" in err
    existing = tmp_path / "taken.csv"
    existing.write_text("precious")
    assert main(["detect", str(corpus["docs"]), f"tokenizer={corpus['tokenizer']}", key,
                 f"out={existing}"]) == 2
    one_line_error(capsys.readouterr().err)
    assert existing.read_text() == "precious" and not (tmp_path / "taken.corpus.json").exists()


def test_a_run_without_tokenizer_or_key_file(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 3\nwatermark:\n  method: exp\n  key_file: null\n")
    out = tmp_path / "o.csv"
    assert main(["detect", str(corpus["docs"]), f"run={run}", f"out={out}"]) == 2
    err = capsys.readouterr().err
    one_line_error(err)
    assert "has no tokenizer.json" in err and "tokenizer=" in err
    # the explicit tokenizer overrides; no key file: the run's experiment key, with a note
    assert main(["detect", str(corpus["docs"]), f"run={run}", f"tokenizer={corpus['tokenizer']}",
                 f"out={out}"]) == 0
    std = capsys.readouterr()
    assert "experiment key" in std.err
    record = json.loads((tmp_path / "o.corpus.json").read_text())
    assert record["method"] == "exp" and record["settings"]["context_width"] == 2
    assert record["settings_from"]["context_width"] == "default"
    assert not record["corpus_test"]["flagged"]        # the KGW-marked text, EXP's other key


def test_the_text_round_trip_keeps_detection(corpus):
    """Decoding the sampled ids and encoding the text again changes some ids (BPE need not give
    the sampled segmentation back); detection, which sees only the text, still works."""
    tok, wm = corpus["tok"], corpus["wm"]
    for ids, marked in ((corpus["marked_ids"], True), (corpus["clean_ids"], False)):
        again = [torch.from_numpy(a) for a in tok.encode(tok.decode(ids))]
        same = sum(len(a) == len(b) and bool((a == b).all()) for a, b in zip(again, ids))
        direct, text = wm.score(ids), wm.score(again)
        assert same < len(ids)                       # the round trip is not exact ...
        if marked:                                   # ... and costs little of the signal
            assert float(text.z.mean()) > 0.85 * float(direct.z.mean())
            assert bool(text.flagged.all()) and bool(direct.flagged.all())
        else:
            assert int(text.flagged.sum()) <= 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_an_unreadable_text_file_is_listed(corpus, tmp_path, capsys):
    root = tmp_path / "locked"
    root.mkdir()
    (root / "ok.txt").write_bytes((corpus["docs"] / "clean" / "c00.txt").read_bytes())
    secret = root / "locked.txt"
    secret.write_text("some text")
    os.chmod(secret, 0)
    out = tmp_path / "l.csv"
    try:
        assert main(["detect", str(root), f"tokenizer={corpus['tokenizer']}",
                     f"key_file={corpus['key_file']}", f"out={out}"]) == 0
    finally:
        os.chmod(secret, 0o600)
    rows = {r["path"]: r for r in rows_of(out)}
    assert rows["locked.txt"]["status"] == "unreadable"
    assert "permission denied" in rows["locked.txt"]["reason"]
    assert "unreadable locked.txt: permission denied" in capsys.readouterr().err
