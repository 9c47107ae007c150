"""Where training numbers go: `metrics.jsonl` (one JSON object per line), TensorBoard, a progress bar.

metrics.jsonl is the run's single history: on resume from step N, lines after N are dropped, so a
killed-and-resumed run reads exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def _json_value(value: Any) -> Any:
    """Floats stay numbers; NaN/inf become strings so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of `run_dir/metrics.jsonl` (empty when there is none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Keep only records with step <= last_step (atomically), the history up to a resumed checkpoint."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


class MetricsLogger:
    """Appends records to metrics.jsonl and mirrors numeric values to TensorBoard (if available)."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int = 0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.run_dir, resume_step)
        self._file = open(self.run_dir / METRICS_FILE, "a")  # noqa: SIM115 - closed in close()
        self._tb = _tensorboard_writer(self.run_dir / "tb", resume_step) if tensorboard else None

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key if "/" in key else f"train/{key}", value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _tensorboard_writer(log_dir: Path, resume_step: int):
    """A SummaryWriter that discards older events after `resume_step`, or None without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(log_dir), purge_step=resume_step + 1)


class ProgressBar:
    """A rich progress bar on stderr with ETA and a live status (loss/lr while training); does nothing
    when disabled."""

    def __init__(self, total: int, start: int, enabled: bool, label: str = "train"):
        self._progress = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
            console=Console(file=sys.stderr),
        )
        self._task = self._progress.add_task(label, total=total, completed=start, status="")
        self._progress.start()

    def update(self, step: int, loss: float, lr: float) -> None:
        self.advance_to(step, f"loss {loss:.4f}  lr {lr:.2e}")

    def advance_to(self, completed: int, status: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, status=status)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
