"""User-facing errors: one message naming what went wrong, where, and how to fix it.

The CLI prints a `PolmError` as a single line (no traceback) and exits with code 2.
Anything else that escapes is a bug in polm and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PolmError(Exception):
    """A mistake the user can fix: bad path, malformed record, unknown key, missing extra."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        head = f"{self.where}: {self.what}" if self.where else self.what
        return f"{head}. {self.fix}" if self.fix else head


class TrainingDiverged(PolmError):
    """Loss or gradient became NaN/inf; the last good checkpoint is kept."""


class TrainingInterrupted(PolmError):
    """SIGTERM/SIGINT stopped training at a step boundary, after a checkpoint of that step was saved."""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to `name`, or None if nothing is close."""
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return found[0] if found else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """'Did you mean X?' or the list of valid names, for a fix hint."""
    candidates = sorted(candidates)
    best = closest(name, candidates)
    if best is not None:
        return f"Did you mean '{best}'?"
    return "Valid names: " + ", ".join(candidates) + "."


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency lazily, or fail with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise PolmError(
            f"{purpose} needs the optional package '{module}', which is not installed",
            fix=f"Install it with: pip install 'polm[{extra}]'",
        ) from err
