"""watermark.keys: deterministic derivation, and a key that never shows up in its string forms."""
import logging
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from watermark import SecretKey

SECRET = "correct-horse-battery-staple-7F3A"


def test_message_is_deterministic_binary_and_sized():
    a, b = SecretKey(SECRET), SecretKey(SECRET)
    for k in (1, 7, 32, 48, 100, 256):
        m = a.message(k)
        assert m.shape == (k,) and m.dtype == torch.float32
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(m, b.message(k))
    assert a.seed("x") == b.seed("x") and 0 <= a.seed("x") < 2 ** 63
    assert a.seed("x") != a.seed("y")


def test_different_keys_give_different_messages_and_fair_bits():
    msgs = torch.stack([SecretKey(f"key-{i}").message(64) for i in range(200)])
    assert len({tuple(m.tolist()) for m in msgs}) == 200
    # 12,800 bits: a fair coin gives 0.5 +- 0.0044 (1 sd)
    assert abs(msgs.mean().item() - 0.5) < 0.02


def test_key_never_in_repr_str_format_or_logs(caplog):
    key = SecretKey(SECRET)
    shown = [repr(key), str(key), f"{key}", f"{key!r}", f"{key:>40}", "%s %r" % (key, key),
             repr([key]), repr({"key": key})]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("madmark.test").info("using %s / %r", key, key)
        logging.getLogger("madmark.test").warning(f"key={key}")
    shown.append(caplog.text)
    for text in shown:
        assert SECRET not in text
        assert SECRET.encode().hex() not in text
    assert key.fingerprint in repr(key) and len(key.fingerprint) == 8


def test_from_file_strips_and_matches_literal(tmp_path):
    path = tmp_path / "key.txt"
    path.write_text(f"  {SECRET}\n\n")
    from_file = SecretKey.from_file(path)
    assert from_file == SecretKey(SECRET)
    assert torch.equal(from_file.message(32), SecretKey(SECRET).message(32))
    assert SecretKey.coerce(f"file:{path}") == from_file
    assert SecretKey.coerce(Path(path)) == from_file
    assert SecretKey.coerce(SECRET) == from_file          # a plain string is the key itself
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError):
        SecretKey.from_file(tmp_path / "empty")


def test_from_file_refuses_what_cannot_be_a_key(tmp_path):
    from watermark.keys import MAX_KEY_FILE_BYTES
    (tmp_path / "blank").write_text(" \t\n  \n")
    with pytest.raises(ValueError, match="only whitespace"):
        SecretKey.from_file(tmp_path / "blank")
    (tmp_path / "big").write_bytes(b"k" * (MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(ValueError, match="larger than 1 MiB"):
        SecretKey.from_file(tmp_path / "big")
    (tmp_path / "limit").write_bytes(b"k" * MAX_KEY_FILE_BYTES)        # 1 MiB itself is allowed
    assert SecretKey.from_file(tmp_path / "limit") == SecretKey(b"k" * MAX_KEY_FILE_BYTES)
    with pytest.raises(OSError):
        SecretKey.from_file(tmp_path / "missing")
    with pytest.raises(OSError):
        SecretKey.from_file(tmp_path)                                   # a folder


def test_generate_and_to_file(tmp_path):
    a, b = SecretKey.generate(), SecretKey.generate()
    assert a != b
    path = tmp_path / "new.key"
    a.to_file(path)
    assert SecretKey.from_file(path) == a
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_pickle_roundtrip_and_bad_keys():
    key = SecretKey(SECRET)
    assert pickle.loads(pickle.dumps(key)) == key
    with pytest.raises(ValueError):
        SecretKey("")
    with pytest.raises(TypeError):
        SecretKey(123)
