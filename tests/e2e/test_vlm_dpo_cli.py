"""`polm vlm-dpo` through the CLI on the tiny composed VLM: the first DPO loss is log 2 (policy = reference),
the chosen answers gain on the rejected ones, the model reloads, resume is exact, bad pairs are one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from vlm_helpers import two_class_image as image

from polm.cli import main


@pytest.fixture()
def pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"   # one preferred answer for every image: a tiny model learns it in 8 steps
    path.write_text("".join(json.dumps({"image": image(i % 2, i), "prompt": "What is this?",
                                        "chosen": "hello", "rejected": "world"}) + "\n" for i in range(8)))
    return path


def dpo_args(model_dir, data, out, *extra) -> list[str]:
    return ["vlm-dpo", f"model.lm.name={model_dir}", "model.tower.name=tiny-conv",
            "model.tower.options={image_size: 16, patch: 4}", f"data.train={data}", "data.max_length=64",
            f"output_dir={out}", "beta=0.5", "components.llm.lr=0.01", "components.projector.lr=0.01",
            "lora.r=8", "lora.alpha=16", "train.max_steps=8", "train.micro_batch_size=4", "train.lr=0.01",
            "train.schedule=constant", "train.progress=false", "train.tensorboard=false", "train.save_every=4", *extra]


def rows(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r and "event" not in r]


def test_dpo_on_image_pairs(tiny_model_dir, pairs, tmp_path):
    from polm.vlm.model import load_vlm

    out = tmp_path / "dpo"
    assert main(dpo_args(tiny_model_dir, pairs, out)) == 0
    steps = rows(out)
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)   # step 1: the policy is the reference
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.2, [r["loss"] for r in steps]
    assert steps[-1]["margins"] > 0 and steps[-1]["accuracy"] == 1.0
    load_vlm(out / "final")

    part = tmp_path / "part"
    assert main(dpo_args(tiny_model_dir, pairs, part, "train.max_steps=4")) == 0
    (part / "run.json").write_text(json.dumps({"status": "running"}))
    (part / "final").rename(tmp_path / "old-final")
    assert main(dpo_args(tiny_model_dir, pairs, part)) == 0
    assert [r["loss"] for r in rows(part)] == pytest.approx([r["loss"] for r in steps], abs=1e-6)


def test_bad_pairs_and_loss_are_one_line(tiny_model_dir, tmp_path, capsys):
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({"image": image(0, 0), "prompt": "q", "chosen": "hello", "rejected": "hello"}) + "\n")
    cases = {f"data.train={same}": "same.jsonl:1: 'chosen' and 'rejected' are the same answer",
             "loss=kto": "reads unpaired data", "loss=dpoo": "Did you mean 'dpo'"}
    for override, message in cases.items():
        assert main(dpo_args(tiny_model_dir, same, tmp_path / "bad", override)) == 2, override
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
