"""madcore.files: atomic writes leave the old file or the new one, and no temporary behind."""
import json
import os

import pytest
import torch

from madcore.files import (atomic_directory, atomic_torch_save, atomic_write_json,
                           atomic_write_text, atomic_write_with, is_temporary)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask      # as open() would make it


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_with(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["w.bin"]


def test_json_and_torch_round_trip(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1, "p": tmp_path})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1, "p": str(tmp_path)}
    atomic_torch_save(tmp_path / "t.pt", {"w": torch.arange(3)})
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["w"], torch.arange(3))


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(ValueError):
        with atomic_directory(final) as tmp:
            (tmp / "a.txt").write_text("a")
            raise ValueError("stop")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(final) as tmp:
        assert is_temporary(tmp)
        (tmp / "a.txt").write_text("a")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "a"
    with pytest.raises(FileExistsError):
        with atomic_directory(final):
            pass
    with atomic_directory(final, replace=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_directory_may_take_the_place_of_an_empty_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    with pytest.raises(FileExistsError):                 # not without empty_ok
        with atomic_directory(final):
            pass
    with atomic_directory(final, empty_ok=True) as tmp:
        (tmp / "a.txt").write_text("a")
    assert [p.name for p in final.iterdir()] == ["a.txt"]
    with pytest.raises(FileExistsError):                 # no longer empty: refused up front
        with atomic_directory(final, empty_ok=True):
            pass
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(OSError):                         # filled meanwhile: the rename fails
        with atomic_directory(other, empty_ok=True) as tmp:
            (tmp / "new.txt").write_text("new")
            (other / "mine.txt").write_text("mine")
    assert [p.name for p in other.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "out"]
