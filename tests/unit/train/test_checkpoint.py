"""Checkpoints: exact round trip of every state, atomic writes, pruning, mismatch errors."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from polm.errors import PolmError
from polm.train import checkpoint as ckpt
from polm.train.batches import BatchStream
from polm.train.checkpoint import (
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from polm.train.config import TrainConfig
from polm.train.schedule import build_scheduler


def make_state(seed: int = 0) -> TrainState:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    scheduler = build_scheduler(optimizer, TrainConfig(schedule="cosine", warmup_steps=2), total_steps=10)
    batches = BatchStream(list(range(7)), lambda xs: {"x": torch.tensor(xs)}, micro_batch_size=2, seed=seed)
    return TrainState(dict(layer.named_parameters()), optimizer, scheduler, batches)


def advance(state: TrainState, steps: int) -> None:
    for _ in range(steps):
        x = next(state.batches)["x"].float()
        loss = (state.params["weight"].sum() * x.sum() + state.params["bias"].pow(2).sum())
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad()


def test_round_trip_restores_params_optimizer_schedule_data_and_rngs(tmp_path):
    state = make_state()
    advance(state, 3)
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    path = save_checkpoint(tmp_path, 3, state, {"elapsed_s": 1.5}, keep=2)
    expected_draws = (torch.rand(3), random.random(), np.random.rand())
    advance(state, 2)
    expected_params = {n: p.detach().clone() for n, p in state.params.items()}

    other = make_state(seed=9)                     # different init, different data seed
    meta = load_checkpoint(path, other)
    assert meta["step"] == 3 and meta["elapsed_s"] == 1.5
    draws = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], expected_draws[0]) and draws[1:] == expected_draws[1:]
    advance(other, 2)                               # same two steps -> bit-identical parameters
    for name, param in other.params.items():
        assert torch.equal(param, expected_params[name]), name
    assert other.scheduler.last_epoch == state.scheduler.last_epoch == 5
    assert other.batches.state_dict() == state.batches.state_dict()


def test_a_leftover_temp_dir_is_ignored_and_cleaned(tmp_path):
    state = make_state()
    save_checkpoint(tmp_path, 4, state, {}, keep=2)
    leftover = tmp_path / "checkpoints" / ".tmp-step-6-killed"
    leftover.mkdir()
    (leftover / "state.json").write_text("{")     # a save cut short mid-write
    assert latest_checkpoint(tmp_path).name == "step-4"
    load_checkpoint(latest_checkpoint(tmp_path), make_state())
    save_checkpoint(tmp_path, 8, state, {}, keep=2)
    assert not leftover.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-4", "step-8"]


def test_a_failed_save_leaves_no_checkpoint_behind(tmp_path, monkeypatch):
    state = make_state()
    save_checkpoint(tmp_path, 2, state, {}, keep=2)

    def disk_full(obj, path):
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 4, state, {}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    state = make_state()
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, state, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-4", "step-5"]
    save_checkpoint(tmp_path, 5, state, {}, keep=0)   # re-saving a step replaces it; keep=0 keeps all
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-4", "step-5"]


def test_loading_into_a_different_model_is_a_polm_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, make_state(), {}, keep=1)
    layer = torch.nn.Linear(3, 4)                  # same names, other shapes
    wrong = make_state()
    wrong.params = dict(layer.named_parameters())
    with pytest.raises(PolmError, match="shape"):
        load_checkpoint(path, wrong)
    wrong.params = {"lora_A": torch.nn.Parameter(torch.zeros(1))}
    with pytest.raises(PolmError, match="do not match this run"):
        load_checkpoint(path, wrong)


def test_the_old_checkpoint_is_deleted_only_after_the_new_one_is_complete(tmp_path, monkeypatch):
    state = make_state()
    save_checkpoint(tmp_path, 2, state, {}, keep=1)
    real_save = ckpt.torch.save

    def fail_on_rng(obj, path):
        if str(path).endswith("rng.pt"):                # optimizer.pt is written, then the save dies
            raise OSError("No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(ckpt.torch, "save", fail_on_rng)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 4, state, {}, keep=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    save_checkpoint(tmp_path, 4, state, {}, keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-4"]
    assert ckpt.checkpoint_path(tmp_path, 4) == tmp_path / "checkpoints" / "step-4"


def test_re_saving_a_step_swaps_in_the_new_copy_and_leaves_no_hidden_dirs(tmp_path):
    state = make_state()
    save_checkpoint(tmp_path, 3, state, {"note": "first"}, keep=0)
    save_checkpoint(tmp_path, 3, state, {"note": "second"}, keep=0)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-3"]
    assert json.loads((root / "step-3" / "state.json").read_text())["note"] == "second"
