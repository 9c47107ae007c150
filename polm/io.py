"""The one place for atomic writes (files, JSON, directories) and file hashing.

Everything is written under a hidden temp name beside its target and renamed into place, so a
crash or a failing writer never leaves a half-written file or a directory that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from polm.errors import PolmError


def _temp_name(target: Path, kind: str = "tmp") -> Path:
    """A fresh hidden sibling of `target`: `.NAME.tmp-PID-RANDOM` (`kind="old"`: a replaced copy).

    The process id lets a cleaner tell the leftovers of dead processes from live writes.
    """
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` for a writer that wants a path (savefig, an assembler).

    When the block succeeds the temp file is renamed onto `path`; when it raises, the temp file is
    removed and `path` keeps its old content. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    """Write `data` to `path` atomically; `fsync=True` also flushes file and directory to disk."""
    return _write(path, lambda fh: fh.write(data), "xb", fsync)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return _write(path, lambda fh: fh.write(text), "x", fsync)


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2, *, sort_keys: bool = False,
                      default: Callable[[Any], Any] | None = str, fsync: bool = False) -> Path:
    """Write `data` as JSON atomically. Values JSON cannot encode go through `default` (paths,
    dtypes become their `str`); `default=None` makes them an error instead."""
    return _write(path, lambda fh: json.dump(data, fh, indent=indent, sort_keys=sort_keys, default=default),
                  "x", fsync)


def _write(path: str | Path, write: Callable[[Any], Any], mode: str, fsync: bool) -> Path:
    path = Path(path)
    encoding = None if "b" in mode else "utf-8"
    with atomic_file(path) as tmp, open(tmp, mode, encoding=encoding) as fh:
        write(fh)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    if fsync:
        _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_dir(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside `target`; on success it becomes `target`, on failure it vanishes.

    An existing empty directory is replaced freely; anything else at `target` is refused with a
    PolmError (checked before the block runs and again at the rename) unless `overwrite`, which
    moves the old copy aside, renames the new one in, then deletes the old one (put back if the
    rename fails). On failure the parents this call created are removed too.
    """
    target = Path(target)
    made = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
    _refuse_existing(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(target)
    tmp.mkdir()
    try:
        yield tmp
        _refuse_existing(target, overwrite)
        _publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in made:  # innermost first
            if parent.exists() and not any(parent.iterdir()):
                parent.rmdir()
        raise


def _occupied(target: Path) -> bool:
    return target.exists() and (not target.is_dir() or any(target.iterdir()))


def _refuse_existing(target: Path, overwrite: bool) -> None:
    if not overwrite and _occupied(target):
        raise PolmError(f"'{target}' already exists", fix="Choose another path, or allow overwriting it.")


def _publish_dir(tmp: Path, target: Path) -> None:
    if not _occupied(target):
        os.replace(tmp, target)  # a directory that appeared meanwhile makes this fail, not merge
        return
    old = _temp_name(target, "old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in `chunk`-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def records_sha256(records: Iterable[dict]) -> str:
    """Hex sha256 over records in order, each as key-sorted JSON (non-JSON values as their str)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
    return digest.hexdigest()
