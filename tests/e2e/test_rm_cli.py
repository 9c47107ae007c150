"""`polm rm` through the CLI on a tiny model: loss falls, held-out pair accuracy, HF-format output that
reloads as a reward function with the same scores, bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polm.cli import main

PAIRS = [{"prompt": f"What is {a} + {b}?", "chosen": f"The answer is {a + b}.", "rejected": f"hello world {a}"}
         for a in range(4) for b in range(4)]


@pytest.fixture()
def pair_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def rm_args(model_dir, data, out, *extra) -> list[str]:
    return ["rm", f"model.name={model_dir}", f"data.train={data}", f"output_dir={out}", "train.max_steps=15",
            "train.micro_batch_size=4", "train.lr=0.01", "train.schedule=constant", "train.progress=false",
            "train.tensorboard=false", "data.max_length=64", "data.eval_fraction=0.25", *extra]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_rm_learns_pairs_and_reloads_as_reward_function(method, tiny_model_dir, pair_file, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from polm.models.heads import load_reward_model

    out = tmp_path / method
    assert main(rm_args(tiny_model_dir, pair_file, out, f"method={method}")) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r and "eval/loss" not in r]
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    held_out = json.loads((out / "eval" / "pairs.json").read_text())
    assert held_out["eval_pairs"] == 4 and held_out["accuracy"] == 1.0
    # plain HF format: loads without peft, one output
    assert AutoModelForSequenceClassification.from_pretrained(out / "final").config.num_labels == 1
    rm = load_reward_model(out / "final", device="cpu")
    held = [{"prompt": "What is 3 + 3?", "completion": "The answer is 6."},
            {"prompt": "What is 3 + 3?", "completion": "hello world 3"}]
    good, bad = rm.score(held)
    assert good > bad
    # a formatted string scores the same as the prompt/completion item it came from
    text = rm.tokenizer.decode(rm._ids(held[0]))
    assert rm.score([text])[0] == pytest.approx(good, abs=1e-4)


def test_score_ignores_padding(tiny_model_dir, pair_file, tmp_path):
    from polm.models.heads import load_reward_model

    out = tmp_path / "run"
    assert main(rm_args(tiny_model_dir, pair_file, out, "method=full", "train.max_steps=2")) == 0
    rm = load_reward_model(out / "final", device="cpu")
    item = {"prompt": "What is 1 + 1?", "completion": "The answer is 2."}
    longer = {"prompt": "What is 1 + 1? " * 5, "completion": "The answer is 2. hello world"}
    alone = rm.score([item])[0]
    batched = rm.score([item, longer])[0]   # padded to the longer row
    assert batched == pytest.approx(alone, abs=1e-5)
    assert torch.isfinite(torch.tensor(rm.score([longer]))).all()


def test_missing_field_is_one_line(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    assert main(rm_args(tiny_model_dir, data, tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert f"{data}:2: field 'rejected' is missing" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
