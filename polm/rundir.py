"""The run directory every recipe writes: resolved config, lineage, status, final model.

A run directory is created only after config, data and model have all loaded, so a user mistake
never leaves a directory behind. `run.json` records the status: `running`, `completed`, `interrupted`
(SIGTERM/SIGINT, resumable) or `failed` (with the error), so a directory never claims a success it did
not have, and one entry per attempt (started, resumed_from, ended, status) so a resumed run says so. An
attempt whose process died without a word (SIGKILL, the OOM killer, a power cut) is marked `killed` by
the next one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from polm.config import dump_config, to_dict
from polm.errors import PolmError, TrainingInterrupted
from polm.io import atomic_write_json

# Settings that may change when an unfinished run is resumed: bookkeeping that computes nothing, plus
# the continuation knobs (run longer; lower the lr after a divergence). Any other change refuses.
RESUMABLE_CHANGES = frozenset({
    "output_dir", "overwrite", "train.resume", "train.progress", "train.tensorboard", "train.log_every",
    "train.save_every", "train.keep_checkpoints", "train.max_steps", "train.epochs", "train.lr",
    "train.malloc_mmap_threshold_mb",
})


def read_run(run_dir: Path) -> dict[str, Any]:
    """`run_dir/run.json` ({} when there is none)."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def read_status(run_dir: Path) -> str | None:
    return read_run(run_dir).get("status")


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


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, f"{name}.") if isinstance(value, dict) and value else {name: value})
    return flat


def first_config_difference(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """(dotted key, old value, new value) of the first setting that differs, in the new config's
    order, ignoring RESUMABLE_CHANGES; None when a resume would run under the same settings."""
    flat_old, flat_new, missing = _flatten(old), _flatten(new), "<unset>"
    for key in [*flat_new, *(k for k in flat_old if k not in flat_new)]:
        if key not in RESUMABLE_CHANGES and flat_old.get(key, missing) != flat_new.get(key, missing):
            return key, flat_old.get(key, missing), flat_new.get(key, missing)
    return None


def check_resume_config(run_dir: Path, cfg: Any) -> None:
    """Refuse to continue checkpoints written under other settings: that would not be an exact resume."""
    saved = run_dir / "config.yaml"
    if not saved.is_file() or not any((run_dir / "checkpoints").glob("step-*")):
        return
    new = yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    diff = first_config_difference(yaml.safe_load(saved.read_text()) or {}, new)
    if diff is not None:
        key, was, now = diff
        raise PolmError(f"output directory '{run_dir}' holds checkpoints of a run with other settings: "
                        f"{key} was {was!r}, now {now!r}",
                        fix="Rerun with the same settings to resume it exactly, choose another output_dir=..., "
                            "or pass overwrite=true to start over.")


def record_resume(run_dir: Path, step: int) -> None:
    """Note in run.json that this attempt continued from checkpoint `step` (no-op without run.json)."""
    record_attempt(run_dir, resumed_from=step)


def record_attempt(run_dir: Path, **fields: Any) -> None:
    """Add `fields` to this attempt's entry in run.json (no-op without run.json)."""
    run = read_run(run_dir)
    if run:
        run.setdefault("attempts", [{}])[-1].update(fields)
        atomic_write_json(Path(run_dir) / "run.json", run)


def _end_attempt(run_dir: Path, status: str, error: str | None = None) -> None:
    """Set the status of the run and of its last attempt (re-read: train() may have noted a resume)."""
    run = read_run(run_dir)
    ended = {"status": status, "ended": time.time(), **({"error": error} if error else {})}
    run.setdefault("attempts", [{}])[-1].update(ended)
    run.pop("error", None)
    atomic_write_json(run_dir / "run.json", {**run, **ended})


@contextmanager
def run_directory(run_dir: Path, cfg: Any, *, recipe: str, overwrite: bool,
                  lineage: dict[str, Any]) -> Iterator[Path]:
    """Create `run_dir`, write config + lineage, and record how this attempt ended in `run.json`.

    An unfinished run's directory is continued (its attempts are kept), after checking that the
    settings match those its checkpoints were written under (check_resume_config)."""
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    check_resume_config(run_dir, cfg)
    previous = read_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    atomic_write_json(run_dir / "lineage.json", {"recipe": recipe, **lineage})
    attempt = {"started": time.time()}
    earlier = [a if "status" in a else {**a, "status": "killed"} for a in previous.get("attempts", [])]
    atomic_write_json(run_dir / "run.json", {"recipe": recipe, "status": "running",
                                             "started": previous.get("started", attempt["started"]),
                                             "attempts": [*earlier, attempt]})
    try:
        yield run_dir
    except BaseException as err:
        interrupted = isinstance(err, (TrainingInterrupted, KeyboardInterrupt))
        _end_attempt(run_dir, "interrupted" if interrupted else "failed", f"{type(err).__name__}: {err}")
        raise
    _end_attempt(run_dir, "completed")
