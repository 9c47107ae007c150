"""`polm demo` end to end on a tiny model: eval before, SFT, eval after, table and run directory."""

from __future__ import annotations

import json

from polm.cli import main


def test_demo_runs_before_sft_after(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", f"output_dir={out}", f"sft.model.name={tiny_model_dir}",
            "eval_tasks=arith:chain_sum?n=6&seed=1234&min_terms=2&max_terms=2&max_digits=1",
            "train_per_task=24", "eval_max_new_tokens=4", "sft.train.max_steps=3", "sft.train.micro_batch_size=8",
            "sft.train.progress=false", "sft.train.tensorboard=false", "sft.lora.r=4", "sft.data.max_length=96"]
    assert main(args) == 0
    summary = json.loads((out / "demo.json").read_text())
    (task,) = summary["before"]["tasks"]
    assert summary["before"]["tasks"][task]["n"] == summary["after"]["tasks"][task]["n"] == 6
    assert summary["gain"][task]["n"] == 6
    train_rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(train_rows) == 24 and all(r["completion"].splitlines()[-1].startswith("Answer: ") for r in train_rows)
    eval_questions = {r["prompt"] for r in json.loads(next((out / "eval" / "before").glob("*.json")).read_text())["records"]}
    assert eval_questions and (out / "sft" / "plots" / "loss.png").is_file()
    assert "Greedy accuracy" in capsys.readouterr().out


def test_demo_refuses_training_on_the_test_seed(tmp_path, capsys):
    assert main(["demo", f"output_dir={tmp_path / 'd'}", "train_seed=1234"]) == 2
    assert "also the test seed" in capsys.readouterr().err
