"""Where training numbers go: `metrics.jsonl` (one JSON object per line), TensorBoard, progress (a bar on
a terminal, plain lines elsewhere).

metrics.jsonl is the run's single history: on resume from step N, lines after N (and a last line torn
by a kill) are dropped, so a killed-and-resumed run reads exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from polm.io import atomic_write_text

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
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):   # torn by a kill or a full disk mid-write: never a whole record
        lines.pop()
    kept = [r for r in map(json.loads, filter(str.strip, lines)) if r.get("step", 0) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


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
    """Progress on stderr (or `stream`). On a terminal: a rich bar with ETA and a live status (loss/lr
    while training). Elsewhere (nohup, CI, a pipe), where that bar would be invisible: one plain,
    flushed line every `every` steps (default: a tenth of the run) or `interval_s` seconds since the
    last line, whichever comes first, and at the end. Disabled: nothing."""

    def __init__(self, total: int, start: int, enabled: bool, label: str = "train", *, stream: TextIO | None = None,
                 every: int | None = None, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._progress = None
        self._lines: _PlainLines | None = None
        if not enabled:
            return
        from rich.console import Console

        console = Console(file=sys.stderr if stream is None else stream)
        if console.is_terminal or console.is_jupyter:
            self._progress = _rich_progress(console, label, total, start)
            self._task = self._progress.tasks[0].id
        else:
            every = every if every is not None else max(1, math.ceil(total / 10))
            self._lines = _PlainLines(console.file, label, total, start, every, interval_s, clock)

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float | None = None) -> None:
        if self._lines is not None:
            speed = f"  {tokens_per_s:.0f} tokens/s" if tokens_per_s is not None else ""
            self._lines.advance_to(step, f"loss {loss:.4f}  lr {lr:.2e}{speed}", noun="step ")
        else:
            self.advance_to(step, f"loss {loss:.4f}  lr {lr:.2e}")

    def advance_to(self, completed: int, status: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, status=status)
        elif self._lines is not None:
            self._lines.advance_to(completed, status)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _rich_progress(console, label: str, total: int, start: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console,
    )
    progress.add_task(label, total=total, completed=start, status="")
    progress.start()
    return progress


def clock_text(seconds: float) -> str:
    """Seconds as H:MM:SS (rich's elapsed-time format)."""
    whole = int(max(seconds, 0))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


class _PlainLines:
    """The non-terminal progress: `label: [step ]k/N  status  elapsed H:MM:SS  eta H:MM:SS`, where
    eta = (N - k) × elapsed / (k - start), the rate of this call (a resumed run counts from its start)."""

    def __init__(self, stream: TextIO, label: str, total: int, start: int, every: int, interval_s: float,
                 clock: Callable[[], float]):
        self.stream, self.label, self.total, self.start = stream, label, total, start
        self.every, self.interval_s, self.clock = every, interval_s, clock
        self.began = self.last_time = clock()
        self.last_count = start

    def advance_to(self, completed: int, status: str, noun: str = "") -> None:
        now = self.clock()
        due = (completed >= self.total or completed - self.last_count >= self.every
               or now - self.last_time >= self.interval_s)
        if not due or completed <= self.last_count:
            return
        elapsed = now - self.began
        done = completed - self.start
        eta = clock_text((self.total - completed) * elapsed / done) if done > 0 else "?"
        status = f"  {status}" if status else ""
        self.stream.write(f"{self.label}: {noun}{completed}/{self.total}{status}  "
                          f"elapsed {clock_text(elapsed)}  eta {eta}\n")
        self.stream.flush()
        self.last_count, self.last_time = completed, now
