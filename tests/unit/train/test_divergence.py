"""`polm sft` in-process when a step goes bad: a NaN loss at step k, or a full disk while checkpoint k
is written. Either stops with one clear line and exit code 2, leaves the last good checkpoint intact
(equal to an uninterrupted run's at that step) and nothing half-written, and a rerun resumes from it
to the uninterrupted history."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file

import polm.recipes.sft
from polm.cli import main
from polm.rundir import read_run
from polm.train.metrics import read_metrics

CHATS = [
    [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "The answer is 19."}],
    [{"role": "user", "content": "Calculate 5 - 3 - 6."}, {"role": "assistant", "content": "Answer: -4"}],
]


def sft_args(model_dir: Path, data: Path, out: Path) -> list[str]:
    return ["sft", f"model.name={model_dir}", f"data.train={data}", f"output_dir={out}", "method=full",
            "train.max_steps=5", "train.micro_batch_size=4", "train.lr=0.01", "train.schedule=constant",
            "train.progress=false", "train.tensorboard=false", "data.max_length=64", "train.save_every=1",
            "train.keep_checkpoints=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS * 4))
    return path


@pytest.fixture(scope="module")
def straight(tiny_model_dir, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(sft_args(tiny_model_dir, data, out)) == 0
    return out


def history(run_dir: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(run_dir) if "loss" in r and "event" not in r]


def the_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("polm sft:")]
    assert len(lines) == 1, err
    return lines[0]


def assert_same_weights(a: Path, b: Path) -> None:
    saved, expected = load_file(a / "trainable.safetensors"), load_file(b / "trainable.safetensors")
    assert saved.keys() == expected.keys()
    for name in expected:
        assert torch.equal(saved[name], expected[name]), name


def resume_and_compare(run_dir: Path, args: list[str], straight: Path, from_step: int, capsys) -> None:
    assert main(args) == 0
    assert f"from checkpoints/step-{from_step} (step {from_step} of 5)" in capsys.readouterr().err
    assert history(run_dir) == history(straight)
    attempts = read_run(run_dir)["attempts"]
    assert [(a["status"], a.get("resumed_from")) for a in attempts] == [("failed", None), ("completed", from_step)]


def test_a_nan_loss_at_step_k_stops_and_the_rerun_resumes_from_step_k_minus_1(tiny_model_dir, data, straight,
                                                                               tmp_path, monkeypatch, capsys):
    real, calls = polm.recipes.sft.causal_lm_loss, []

    def poisoned(model, batch, **kwargs):           # one micro-batch per step: call 4 is step 4
        calls.append(1)
        loss_sum, count = real(model, batch, **kwargs)
        return (loss_sum * float("nan") if len(calls) == 4 else loss_sum), count

    monkeypatch.setattr(polm.recipes.sft, "causal_lm_loss", poisoned)
    out = tmp_path / "run"
    args = sft_args(tiny_model_dir, data, out)
    assert main(args) == 2
    line = the_error_line(capsys.readouterr().err)
    assert "training diverged at step 4: loss nan" in line and "the bad update was not applied" in line
    assert f"last good checkpoint {out / 'checkpoints' / 'step-3'} is kept" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2", "step-3"]
    assert_same_weights(out / "checkpoints" / "step-3", straight / "checkpoints" / "step-3")
    assert read_run(out)["status"] == "failed" and "TrainingDiverged" in read_run(out)["error"]

    monkeypatch.setattr(polm.recipes.sft, "causal_lm_loss", real)      # the fix
    resume_and_compare(out, args, straight, 3, capsys)


@pytest.mark.parametrize("writer", ["safetensors", "torch.save"])
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(writer, tiny_model_dir, data, straight, tmp_path,
                                                                monkeypatch, capsys):
    # the weights (safetensors) or the optimizer / RNG files (torch.save) of checkpoint 3 hit ENOSPC
    module, name = (safetensors.torch, "save_file") if writer == "safetensors" else (torch, "save")
    real = getattr(module, name)

    def full_disk(obj, path, *args, **kwargs):
        if ".step-3.tmp-" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(module, name, full_disk)
    out = tmp_path / "run"
    args = sft_args(tiny_model_dir, data, out)
    assert main(args) == 2
    line = the_error_line(capsys.readouterr().err)
    ckpts = out / "checkpoints"
    assert line == (f"polm sft: error: {ckpts / 'step-3'}: could not write the checkpoint of step 3 (No space left "
                    f"on device). The previous checkpoint {ckpts / 'step-2'} is intact: free some space and rerun "
                    "the same command to resume from it")
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-1", "step-2"]     # no half-written or temp dir
    assert_same_weights(ckpts / "step-2", straight / "checkpoints" / "step-2")
    assert read_run(out)["status"] == "failed"

    monkeypatch.setattr(module, name, real)                                    # space freed
    resume_and_compare(out, args, straight, 2, capsys)
