"""`polm dpo` through the CLI on a tiny model: every loss learns a separable toy set, outputs reload,
precomputed reference log-probs give the same first step as on-the-fly ones, bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polm.cli import main

# separable: the chosen answer always states the sum, the rejected one is unrelated words
PAIRS = [{"prompt": f"What is {a} + {b}?", "chosen": f"The answer is {a + b}.", "rejected": f"hello world {a}"}
         for a in range(3) for b in range(4)]


@pytest.fixture()
def pair_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def dpo_args(model_dir, data, out, *extra) -> list[str]:
    return ["dpo", f"model.name={model_dir}", f"data.train={data}", f"output_dir={out}", "train.max_steps=10",
            "train.micro_batch_size=4", "train.lr=0.01", "train.schedule=constant", "train.progress=false",
            "train.tensorboard=false", "data.max_length=64", f"reference.cache_dir={Path(out).parent / 'cache'}",
            *extra]


def read_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r and not any(k.startswith("eval/") for k in r)]


@pytest.mark.parametrize("loss", ["dpo", "ipo", "cdpo", "robust", "hinge", "kto", "orpo", "simpo", "cpo"])
def test_every_loss_learns_the_separable_set(loss, tiny_model_dir, pair_file, tmp_path):
    out = tmp_path / loss
    assert main(dpo_args(tiny_model_dir, pair_file, out, f"loss={loss}")) == 0
    rows = read_rows(out)
    losses = [r["loss"] for r in rows]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < losses[0], losses
    # the implicit reward prefers the chosen answers by the end
    assert rows[-1]["margins"] > rows[0]["margins"], [r["margins"] for r in rows]
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    assert json.loads((out / "lineage.json").read_text())["loss"] == loss


def test_first_step_loss_of_reference_start_is_log2(tiny_model_dir, pair_file, tmp_path):
    # a fresh LoRA adapter is the identity, so policy = reference and the DPO loss is -log σ(0) = log 2
    out = tmp_path / "run"
    assert main(dpo_args(tiny_model_dir, pair_file, out, "train.max_steps=1")) == 0
    assert read_rows(out)[0]["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)


@pytest.mark.parametrize("method,on_the_fly", [("lora", "adapter"), ("full", "copy")])
def test_precompute_gives_the_same_first_steps(method, on_the_fly, tiny_model_dir, pair_file, tmp_path):
    runs = {}
    for mode in (on_the_fly, "precompute"):
        out = tmp_path / mode
        assert main(dpo_args(tiny_model_dir, pair_file, out, f"method={method}", f"reference.mode={mode}",
                             "train.max_steps=3", "train.lr=0.001")) == 0
        runs[mode] = read_rows(out)
    for a, b in zip(runs[on_the_fly], runs["precompute"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/chosen"] == pytest.approx(b["rewards/chosen"], abs=1e-5)
    lineage = json.loads((tmp_path / "precompute" / "lineage.json").read_text())
    assert lineage["data"]["reference"]["cache_hit"] is False


def test_precompute_cache_is_reused_and_keyed_by_data(tiny_model_dir, pair_file, tmp_path):
    def hit(out, data) -> bool:
        assert main(dpo_args(tiny_model_dir, data, out, "reference.mode=precompute", "train.max_steps=1")) == 0
        return json.loads((out / "lineage.json").read_text())["data"]["reference"]["cache_hit"]

    assert hit(tmp_path / "a", pair_file) is False
    assert hit(tmp_path / "b", pair_file) is True
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**p, "rejected": p["rejected"] + "!"}) + "\n" for p in PAIRS))
    assert hit(tmp_path / "c", other) is False


def test_output_reloads_and_generates_like_the_trained_model(tiny_model_dir, pair_file, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from polm.config import load_config
    from polm.data.preferences import encode_pairs, validate_pair
    from polm.models.frozen import completion_logps
    from polm.recipes.dpo import DPOConfig, run_dpo

    cfg = load_config(DPOConfig, None, dpo_args(tiny_model_dir, pair_file, tmp_path / "run")[1:])
    result = run_dpo(cfg)
    reloaded = AutoPeftModelForCausalLM.from_pretrained(result["final_dir"]).eval()
    tok = AutoTokenizer.from_pretrained(result["final_dir"])
    pair, _ = encode_pairs([validate_pair(PAIRS[0], "x")], tok, max_length=64)
    batch = {k: torch.tensor([v]) for k, v in pair[0]["chosen"].items() if k != "prompt_len"}
    trained = result["model"].eval()
    with torch.no_grad():
        torch.testing.assert_close(completion_logps(reloaded, batch)[0], completion_logps(trained, batch)[0])


def test_unknown_loss_parameter_is_one_line(tiny_model_dir, pair_file, tmp_path, capsys):
    assert main(dpo_args(tiny_model_dir, pair_file, tmp_path / "x", "loss=dpo", "loss_options.gamma=1.0")) == 2
    err = capsys.readouterr().err
    assert "loss 'dpo' has no parameter 'gamma'" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_identical_pairs_stop_with_location_or_are_skipped(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS[:4]) +
                    json.dumps({"prompt": "hi", "chosen": "same", "rejected": "same"}) + "\n")
    assert main(dpo_args(tiny_model_dir, data, tmp_path / "x", "train.max_steps=1")) == 2
    assert f"{data}:5: fields 'chosen' and 'rejected' are identical" in capsys.readouterr().err
    assert main(dpo_args(tiny_model_dir, data, tmp_path / "y", "train.max_steps=1", "--skip-invalid")) == 0
    assert "Skipped 1 of 5 records" in capsys.readouterr().out


@pytest.mark.parametrize("path", ["configs/dpo.yaml", "configs/dpo_precompute.yaml"])
def test_example_configs_load_for_every_loss(path):
    from polm.config import load_config
    from polm.losses import PREFERENCE_LOSSES
    from polm.recipes.dpo import DPOConfig, loss_kwargs

    root = Path(__file__).resolve().parents[2]
    for loss in PREFERENCE_LOSSES.names():
        cfg = load_config(DPOConfig, root / path, [f"loss={loss}"])
        assert loss_kwargs(cfg, PREFERENCE_LOSSES.get(loss)) == {}
