"""Atomic writes and hashing: content lands, no temp file is left, and a writer that fails mid-way
leaves the target as it was."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from polm.errors import PolmError
from polm.io import (
    atomic_dir,
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    records_sha256,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- files ---------------------------------------------------------------------------------------------

def test_write_text_creates_parents_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b" / "note.txt"
    assert atomic_write_text(path, "héllo\n") == path
    assert path.read_bytes() == "héllo\n".encode()  # UTF-8 whatever the locale
    assert _names(path.parent) == ["note.txt"]


def test_write_text_replaces_old_content(tmp_path):
    path = tmp_path / "note.txt"
    path.write_text("old")
    atomic_write_text(path, "new", fsync=True)
    assert path.read_text() == "new" and _names(tmp_path) == ["note.txt"]


def test_write_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    atomic_write_bytes(path, b"\x00\x01\xff")
    assert path.read_bytes() == b"\x00\x01\xff" and _names(tmp_path) == ["blob.bin"]


def test_written_files_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0o600


def test_write_json_default_indent_and_str_fallback(tmp_path):
    path = tmp_path / "run.json"
    atomic_write_json(path, {"b": 1, "a": Path("/x/y")})
    assert path.read_text() == '{\n  "b": 1,\n  "a": "/x/y"\n}'
    atomic_write_json(path, {"b": 1, "a": 2}, indent=None, sort_keys=True)
    assert path.read_text() == '{"a": 2, "b": 1}'
    assert _names(tmp_path) == ["run.json"]


def test_json_that_fails_mid_way_leaves_the_target_untouched(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"status": "running"}')
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic_write_json(path, {"status": "done", "bad": object()}, default=None)
    circular: list = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        atomic_write_json(path, {"status": "done", "loop": circular})
    assert json.loads(path.read_text()) == {"status": "running"}
    assert _names(tmp_path) == ["run.json"]


def test_atomic_file_renames_on_success_and_removes_the_temp_on_failure(tmp_path):
    path = tmp_path / "plot.png"
    with atomic_file(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".plot.png.tmp-{os.getpid()}-")
        tmp.write_bytes(b"png")
    assert path.read_bytes() == b"png" and _names(tmp_path) == ["plot.png"]
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert path.read_bytes() == b"png" and _names(tmp_path) == ["plot.png"]


# --- directories ---------------------------------------------------------------------------------------

def test_atomic_dir_publishes_the_whole_directory(tmp_path):
    target = tmp_path / "out" / "final"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(f".final.tmp-{os.getpid()}-")
        (tmp / "a.txt").write_text("a")
        assert not target.exists()  # nothing visible until the block ends
    assert _names(target) == ["a.txt"] and _names(target.parent) == ["final"]


def test_atomic_dir_failure_leaves_nothing_and_removes_parents_it_made(tmp_path):
    target = tmp_path / "new" / "deeper" / "final"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half written")
            raise KeyboardInterrupt
    assert _names(tmp_path) == []


def test_atomic_dir_failure_keeps_the_old_target(tmp_path):
    target = tmp_path / "final"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("callback failed")
    assert _names(target) == ["old.txt"] and _names(tmp_path) == ["final"]


def test_atomic_dir_refuses_an_occupied_target_unless_overwrite(tmp_path):
    target = tmp_path / "final"
    target.mkdir()
    (target / "old.txt").write_text("old")
    ran = []
    with pytest.raises(PolmError, match="already exists"):
        with atomic_dir(target) as tmp:
            ran.append(tmp)
    assert ran == []  # refused before any work is done
    assert _names(target) == ["old.txt"] and _names(tmp_path) == ["final"]
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _names(target) == ["new.txt"] and _names(tmp_path) == ["final"]


def test_atomic_dir_refuses_a_target_that_appears_meanwhile(tmp_path):
    target = tmp_path / "final"
    with pytest.raises(PolmError, match="already exists"):
        with atomic_dir(target) as tmp:
            (tmp / "mine.txt").write_text("mine")
            target.mkdir()
            (target / "theirs.txt").write_text("theirs")
    assert _names(target) == ["theirs.txt"] and _names(tmp_path) == ["final"]


def test_atomic_dir_replaces_an_empty_directory_or_a_file(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty) as tmp:
        (tmp / "a.txt").write_text("a")
    assert _names(empty) == ["a.txt"]
    file = tmp_path / "file"
    file.write_text("not a dir")
    with atomic_dir(file, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("b")
    assert _names(file) == ["b.txt"] and _names(tmp_path) == ["empty", "file"]


def test_atomic_dir_puts_the_old_copy_back_when_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "final"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real = os.replace

    def fail_second(src, dst):
        if Path(src).name.startswith(".final.tmp-"):
            raise OSError("disk full")
        real(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError, match="disk full"):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert _names(target) == ["old.txt"] and _names(tmp_path) == ["final"]


# --- hashing -------------------------------------------------------------------------------------------

def test_file_sha256_matches_hashlib_across_chunks(tmp_path):
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 40
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(path, chunk=7) == hashlib.sha256(data).hexdigest()


def test_records_sha256_is_key_order_free_but_record_order_sensitive():
    a, b = {"x": 1, "y": "two"}, {"z": [3]}
    expected = hashlib.sha256(b'{"x": 1, "y": "two"}{"z": [3]}').hexdigest()
    assert records_sha256([a, b]) == expected
    assert records_sha256([{"y": "two", "x": 1}, b]) == expected
    assert records_sha256([b, a]) != expected
    assert records_sha256([{"p": Path("/d")}]) == hashlib.sha256(b'{"p": "/d"}').hexdigest()
