"""Run directories: refusing to clobber or silently retrain, refusing to resume under other settings,
and run.json's record of every attempt (started, resumed_from, interrupted/failed/completed)."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from polm.errors import PolmError, TrainingInterrupted
from polm.rundir import (
    check_output_dir,
    first_config_difference,
    read_run,
    record_resume,
    run_directory,
)
from polm.train import BatchStream, StepOutput, TrainConfig, train


@dataclass
class Cfg:
    model: str = "tiny"
    output_dir: str = "runs/x"
    overwrite: bool = False
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=6, save_every=2, progress=False,
                                                                   tensorboard=False, lr=0.05, schedule="constant"))


def make_run(run_dir: Path, status: str, checkpoints: bool = False) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": status}))
    if checkpoints:
        (run_dir / "checkpoints" / "step-2").mkdir(parents=True)


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path / "new", resume=True, overwrite=False)           # nothing there yet
    make_run(tmp_path / "done", "completed")
    with pytest.raises(PolmError, match="already holds a completed run.*overwrite=true"):
        check_output_dir(tmp_path / "done", resume=True, overwrite=False)
    check_output_dir(tmp_path / "done", resume=True, overwrite=True)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(PolmError, match="not a polm run directory"):
        check_output_dir(tmp_path / "foreign", resume=True, overwrite=False)
    for status in ("running", "interrupted", "failed"):                       # unfinished: resumable
        make_run(tmp_path / status, status, checkpoints=True)
        check_output_dir(tmp_path / status, resume=True, overwrite=False)
    with pytest.raises(PolmError, match="unfinished run and train.resume is false"):
        check_output_dir(tmp_path / "interrupted", resume=False, overwrite=False)


def test_an_attempt_that_died_without_a_word_is_marked_killed_by_the_next(tmp_path):
    run_dir = tmp_path / "run"
    with run_directory(run_dir, Cfg(), recipe="t", overwrite=False, lineage={}):
        record_resume(run_dir, 0)
        (run_dir / "checkpoints" / "step-2").mkdir(parents=True)
    run = read_run(run_dir)                                  # as a SIGKILL leaves it: status "running"
    run["status"], run["attempts"][0] = "running", {"started": run["attempts"][0]["started"], "resumed_from": 0}
    (run_dir / "run.json").write_text(json.dumps(run))
    with run_directory(run_dir, Cfg(), recipe="t", overwrite=False, lineage={}):
        record_resume(run_dir, 2)
    attempts = read_run(run_dir)["attempts"]
    assert [(a["status"], a.get("resumed_from"), "ended" in a) for a in attempts] == \
        [("killed", 0, False), ("completed", 2, True)]

def test_first_config_difference_names_the_first_key_and_ignores_bookkeeping():
    old = {"model": "a", "train": {"lr": 0.1, "seed": 0, "progress": True, "max_steps": 10}, "output_dir": "x"}
    assert first_config_difference(old, {**old, "output_dir": "./x"}) is None
    assert first_config_difference(old, {**old, "train": {**old["train"], "lr": 0.01, "max_steps": 20,
                                                          "progress": False}}) is None
    assert first_config_difference(old, {**old, "model": "b", "train": {**old["train"], "seed": 1}}) == \
        ("model", "a", "b")
    assert first_config_difference(old, {**old, "train": {**old["train"], "seed": 1}}) == ("train.seed", 0, 1)
    assert first_config_difference(old, {**old, "extra": 3}) == ("extra", "<unset>", 3)


def test_run_json_records_every_attempt(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted), run_directory(run_dir, Cfg(), recipe="t", overwrite=False, lineage={}):
        raise TrainingInterrupted("SIGTERM stopped training after step 2 of 6")
    first = read_run(run_dir)
    assert first["status"] == "interrupted" and "SIGTERM" in first["error"]
    with pytest.raises(RuntimeError), run_directory(run_dir, Cfg(), recipe="t", overwrite=False, lineage={}):
        record_resume(run_dir, 2)
        raise RuntimeError("boom")
    with run_directory(run_dir, Cfg(), recipe="t", overwrite=False, lineage={}):
        assert read_run(run_dir)["status"] == "running"
        record_resume(run_dir, 4)
    run = read_run(run_dir)
    assert [a["status"] for a in run["attempts"]] == ["interrupted", "failed", "completed"]
    assert [a.get("resumed_from") for a in run["attempts"]] == [None, 2, 4]
    assert run["attempts"][1]["error"] == "RuntimeError: boom"
    assert run["status"] == "completed" and "error" not in run
    assert run["started"] == run["attempts"][0]["started"] <= run["attempts"][2]["started"] <= run["ended"]
    with pytest.raises(KeyboardInterrupt), run_directory(tmp_path / "ctrl-c", Cfg(), recipe="t", overwrite=False,
                                                         lineage={}):
        raise KeyboardInterrupt
    assert read_run(tmp_path / "ctrl-c")["status"] == "interrupted"


def test_resuming_under_other_settings_is_refused_unless_overwrite(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted), run_directory(run_dir, Cfg(), recipe="t", overwrite=False, lineage={}):
        (run_dir / "checkpoints" / "step-2").mkdir(parents=True)
        raise TrainingInterrupted("stopped")
    other = Cfg(model="other")
    other.train.seed = 7
    with pytest.raises(PolmError, match=r"other settings: model was 'tiny', now 'other'.*overwrite=true"):
        with run_directory(run_dir, other, recipe="t", overwrite=False, lineage={}):
            pass
    longer = Cfg()
    longer.train.max_steps, longer.train.lr = 12, 0.01    # run longer at a lower lr: a continuation
    with run_directory(run_dir, longer, recipe="t", overwrite=False, lineage={}):
        pass
    assert len(read_run(run_dir)["attempts"]) == 2
    with run_directory(run_dir, other, recipe="t", overwrite=True, lineage={}):
        assert not (run_dir / "checkpoints").exists()
    assert len(read_run(run_dir)["attempts"]) == 1


# --- the whole story on a tiny linear model: SIGTERM, rerun resumes exactly, a third rerun is refused --------


def collate(rows: list[dict]) -> dict:
    return {"input_ids": torch.zeros(len(rows), 1, dtype=torch.long),     # the loop counts tokens from it
            "x": torch.stack([r["x"] for r in rows]), "y": torch.stack([r["y"] for r in rows])}


def linear_batches(seed: int = 0) -> BatchStream:
    xs = torch.randn(12, 3, generator=torch.Generator().manual_seed(seed))
    return BatchStream([{"x": x, "y": x.sum() * 2 + 1} for x in xs], collate, micro_batch_size=4, seed=seed)


def linear_run(run_dir: Path, cfg: Cfg, signal_at: int | None = None) -> list[float]:
    check_output_dir(run_dir, resume=cfg.train.resume, overwrite=cfg.overwrite)
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 1)
    calls = {"n": 0}

    def step(batch: dict) -> StepOutput:
        calls["n"] += 1
        if calls["n"] == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        noisy = torch.nn.functional.dropout(model(batch["x"]).squeeze(-1), 0.2)   # the RNG matters
        return StepOutput(((noisy - batch["y"]) ** 2).sum(), len(batch["y"]))

    with run_directory(run_dir, cfg, recipe="t", overwrite=cfg.overwrite, lineage={}):
        return train(model=model, step_fn=step, batches=linear_batches(), cfg=cfg.train, run_dir=run_dir).losses


def test_sigterm_then_rerun_resumes_exactly_and_a_completed_run_is_not_retrained(tmp_path, capsys):
    full = linear_run(tmp_path / "full", Cfg())
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="SIGTERM stopped training after step 3 of 6"):
        linear_run(run_dir, Cfg(), signal_at=3)
    assert read_run(run_dir)["status"] == "interrupted"
    capsys.readouterr()
    assert linear_run(run_dir, Cfg()) == full[3:]
    assert capsys.readouterr().err == f"polm: resuming {run_dir} from checkpoints/step-3 (step 3 of 6)\n"
    run = read_run(run_dir)
    assert run["status"] == "completed"
    assert [(a["status"], a.get("resumed_from")) for a in run["attempts"]] == [("interrupted", None), ("completed", 3)]
    with pytest.raises(PolmError, match="already holds a completed run"):
        linear_run(run_dir, Cfg())
    assert read_run(run_dir) == run                                  # untouched
