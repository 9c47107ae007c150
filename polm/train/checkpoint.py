"""Atomic training checkpoints with everything an exact resume needs.

`run_dir/checkpoints/step-N/` holds: trainable.safetensors (trainable parameters by name),
optimizer.pt, rng.pt (torch CPU + CUDA generators), scaler.pt (fp16 only) and state.json (step,
scheduler, data position, python + numpy RNG). It is written to a hidden temp directory and
renamed into place, so a `step-N` directory is always complete; leftover temp dirs are ignored.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from polm.errors import PolmError
from polm.io import atomic_dir
from polm.train.batches import BatchSource

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """The live objects a checkpoint saves and restores."""

    params: dict[str, nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: BatchSource
    scaler: torch.amp.GradScaler | None = None


def named_trainable(model: nn.Module, params: list[nn.Parameter]) -> dict[str, nn.Parameter]:
    """Name each trained parameter as the model does; parameters outside the model get `extra.i`."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names.get(id(p), f"extra.{i}"): p for i, p in enumerate(params)}


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step-{step}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete `step-N` directories, oldest first (temp dirs of interrupted saves are skipped)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor states for rng.pt, JSON-able python/numpy states for state.json)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    plain = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
    return tensors, plain


def _restore_rng(tensors: dict[str, Any], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available() and len(tensors["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(tensors["cuda"])
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _write_files(folder: Path, step: int, state: TrainState, extra: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file({n: p.detach().cpu().contiguous() for n, p in state.params.items()}, folder / "trainable.safetensors")
    torch.save(state.optimizer.state_dict(), folder / "optimizer.pt")
    rng_tensors, rng_plain = _rng_state()
    torch.save(rng_tensors, folder / "rng.pt")
    if state.scaler is not None:
        torch.save(state.scaler.state_dict(), folder / "scaler.pt")
    meta = {"step": step, "scheduler": state.scheduler.state_dict(), "batches": state.batches.state_dict(),
            "rng": rng_plain, **extra}
    (folder / "state.json").write_text(json.dumps(meta))


def save_checkpoint(run_dir: Path, step: int, state: TrainState, extra: dict[str, Any], keep: int) -> Path:
    """Write `checkpoints/step-{step}` atomically, then keep only the newest `keep` (all if keep <= 0)."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(run_dir, step)
    try:
        with atomic_dir(final, overwrite=True) as tmp:  # a re-run of the same step swaps the old copy out
            _write_files(tmp, step, state, extra)
    except OSError as err:  # a full disk, a vanished mount: the temp dir is gone, older checkpoints untouched
        raise _save_failed(run_dir, step, err) from err
    _prune(root, run_dir, keep)
    return final


class CheckpointWriteError(PolmError, OSError):
    """A checkpoint could not be written (full disk, vanished mount): one line for people, still an OSError."""


def _save_failed(run_dir: Path, step: int, err: OSError) -> CheckpointWriteError:
    previous = latest_checkpoint(run_dir)
    kept = (f"The previous checkpoint {previous} is intact: free some space and rerun the same command to "
            "resume from it" if previous else "No earlier checkpoint exists: free some space and rerun")
    return CheckpointWriteError(f"could not write the checkpoint of step {step} ({err.strerror or err})",
                                where=str(checkpoint_path(run_dir, step)), fix=kept)


def _prune(root: Path, run_dir: Path, keep: int) -> None:
    """Drop checkpoints beyond the newest `keep` and temp dirs left by interrupted saves.

    Only polm writes into `checkpoints/`, so every hidden entry is such a leftover (polm.io's
    `.step-N.tmp-*` and `.step-N.old-*`, and the `.tmp-*` of earlier polm versions).
    """
    for leftover in root.glob(".*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _load_params(path: Path, params: dict[str, nn.Parameter]) -> None:
    from safetensors.torch import load_file

    saved = load_file(path / "trainable.safetensors")
    if saved.keys() != params.keys():
        missing, unexpected = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
        raise PolmError(
            f"the checkpoint's trainable parameters do not match this run (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})",
            where=str(path),
            fix="Resume with the same model and adapter settings, or start fresh with train.resume=false.",
        )
    with torch.no_grad():
        for name, param in params.items():
            if saved[name].shape != param.shape:
                raise PolmError(f"parameter '{name}' has shape {tuple(saved[name].shape)} in the checkpoint "
                                f"but {tuple(param.shape)} now", where=str(path),
                                fix="Resume with the same model settings, or set train.resume=false.")
            param.copy_(saved[name])


def load_checkpoint(path: Path, state: TrainState) -> dict[str, Any]:
    """Restore parameters, optimizer, scheduler, data position, scaler and RNGs; return state.json."""
    path = Path(path)
    meta = json.loads((path / "state.json").read_text())
    _load_params(path, state.params)
    state.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    state.scheduler.load_state_dict(meta["scheduler"])
    state.batches.load_state_dict(meta["batches"])
    if state.scaler is not None and (path / "scaler.pt").is_file():
        state.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    _restore_rng(torch.load(path / "rng.pt", weights_only=True), meta["rng"])
    return meta
