"""The run directory every recipe writes: resolved config, lineage, status, final model.

A run directory is created only after config, data and model have all loaded, so a user mistake
never leaves a directory behind. `run.json` records the status: `running`, `completed` or `failed`
(with the error), so a directory never claims a success it did not have.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from polm.config import dump_config
from polm.errors import PolmError


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
    os.replace(tmp, path)


def read_status(run_dir: Path) -> str | None:
    path = run_dir / "run.json"
    return json.loads(path.read_text()).get("status") if path.is_file() else None


def check_output_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber a finished run unless asked; an unfinished one is resumed (or replaced)."""
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    status = read_status(run_dir)
    if overwrite:
        return
    if status == "completed":
        raise PolmError(f"output directory '{run_dir}' already holds a completed run",
                        fix="Choose another output_dir=..., or pass overwrite=true to replace it.")
    if status is None:
        raise PolmError(f"output directory '{run_dir}' exists and is not a polm run directory",
                        fix="Choose another output_dir=... (polm never writes into foreign directories).")
    if not resume and (run_dir / "checkpoints").exists():
        raise PolmError(f"output directory '{run_dir}' holds an unfinished run and train.resume is false",
                        fix="Pass train.resume=true to continue it, or overwrite=true to start over.")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def records_sha256(records: list[dict]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@contextmanager
def run_directory(run_dir: Path, cfg: Any, *, recipe: str, overwrite: bool,
                  lineage: dict[str, Any]) -> Iterator[Path]:
    """Create `run_dir`, write config + lineage, and record how the run ended in `run.json`."""
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    write_json(run_dir / "lineage.json", {"recipe": recipe, **lineage})
    started = time.time()
    write_json(run_dir / "run.json", {"recipe": recipe, "status": "running", "started": started})
    try:
        yield run_dir
    except BaseException as err:
        write_json(run_dir / "run.json", {"recipe": recipe, "status": "failed", "started": started,
                                          "ended": time.time(), "error": f"{type(err).__name__}: {err}"})
        raise
    write_json(run_dir / "run.json", {"recipe": recipe, "status": "completed", "started": started,
                                      "ended": time.time()})
