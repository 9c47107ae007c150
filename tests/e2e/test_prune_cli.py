"""`polm prune` through the CLI on a tiny Llama: outputs reload with transformers, reports and masks match; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from polm.cli import main

TEXTS = ["The quick brown fox jumps over the lazy dog.", "What is 12 + 7? The answer is 19.",
         "You are a helpful assistant. Paris is the capital of France.", "Calculate 5 - 3 - 6. Answer: -4"] * 4


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return path


def prune(tmp_path: Path, model_dir: Path, calib: Path, **cfg) -> tuple[int, Path]:
    data = {"model": {"name": str(model_dir), "device": "cpu"}, "output": str(tmp_path / "out"),
            "calibration": {"data": str(calib), "n_samples": 4, "seq_len": 16, "batch_size": 2}, **cfg}
    path = tmp_path / "prune.yaml"
    path.write_text("# polm prune prune.yaml\n" + yaml.safe_dump(data, sort_keys=False))
    return main(["prune", str(path)]), tmp_path / "out"


def test_wanda_50_writes_a_reloadable_model_with_report_masks_and_card(tmp_path, tiny_model_dir, calib, capsys):
    rc, out = prune(tmp_path, tiny_model_dir, calib, method="wanda", sparsity=0.5)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj.weight" in printed and "overall" in printed
    model = AutoModelForCausalLM.from_pretrained(out)
    report = json.loads((out / "sparsity.json").read_text())
    masks = load_file(out / "masks.safetensors")
    assert report["target"] == 0.5 and report["overall"] == 0.5
    assert set(masks) == set(report["layers"]) and len(masks) == 14
    params = dict(model.named_parameters())
    for name, row in report["layers"].items():
        assert row["sparsity"] == 0.5
        assert torch.equal(params[name] != 0, masks[name])
    card = (out / "README.md").read_text()
    assert "**wanda**" in card and "0.5000" in card and str(calib) in card
    assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, model.config.vocab_size)


def test_sparsegpt_24_keeps_two_of_every_four_inputs(tmp_path, tiny_model_dir, calib):
    rc, out = prune(tmp_path, tiny_model_dir, calib, method="sparsegpt", pattern="2:4", options={"block_size": 8})
    assert rc == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[0].self_attn.q_proj.weight
    assert ((w != 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all()


def test_depth_drops_the_lowest_influence_layer_and_reloads(tmp_path, tiny_model_dir, calib):
    rc, out = prune(tmp_path, tiny_model_dir, calib, method="depth", depth={"layers": 1})
    assert rc == 0
    report = json.loads((out / "sparsity.json").read_text())
    bi = report["block_influence"]
    assert report["dropped_layers"] == [min(range(2), key=lambda i: bi[i])]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 1 and not (out / "masks.safetensors").exists()
    assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, model.config.vocab_size)


def test_width_writes_a_smaller_dense_model(tmp_path, tiny_model_dir, calib):
    rc, out = prune(tmp_path, tiny_model_dir, calib, method="width", width={"mlp_fraction": 0.5, "head_fraction": 0.5})
    assert rc == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert (model.config.intermediate_size, model.config.num_attention_heads) == (32, 2)
    assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, model.config.vocab_size)


def save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize(("case", "message"), [
    ("gpt2", "is a Conv1D, which pruning does not support"),
    ("sparsity", r"sparsity must be in [0, 1), got 1.0"),
    ("nm", "2:4 pruning needs the input dimension to be a multiple of 4, but 'model.layers.0.self_attn.q_proj' has 34"),
    ("depth", "cannot drop 2 of the model's 2 decoder layers"),
    ("method", "unknown pruning method 'wand'. Did you mean 'wanda'?"),
])
def test_bad_input_is_one_clear_error_and_nothing_is_written(tmp_path, tiny_model_dir, tiny_tokenizer, calib, capsys,
                                                             case, message):
    model_dir, cfg = tiny_model_dir, {"method": "wanda"}
    if case == "gpt2":
        gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=16, n_layer=1, n_head=2))
        model_dir = save(gpt2, tiny_tokenizer, tmp_path / "gpt2")
    elif case == "sparsity":
        cfg["sparsity"] = 1.0
    elif case == "nm":
        odd = LlamaForCausalLM(LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=34, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1))
        model_dir, cfg["pattern"] = save(odd, tiny_tokenizer, tmp_path / "odd"), "2:4"
    elif case == "depth":
        cfg = {"method": "depth", "depth": {"layers": 2}}
    else:
        cfg["method"] = "wand"
    rc, out = prune(tmp_path, model_dir, calib, **cfg)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]

