"""`polm sft` through the CLI on a tiny model: full, LoRA and DoRA; reload, export, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polm.cli import main

CHATS = [
    [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "The answer is 19."}],
    [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "hello"},
     {"role": "assistant", "content": "good morning"}, {"role": "user", "content": "thanks"},
     {"role": "assistant", "content": "Paris is the capital of France."}],
    [{"role": "user", "content": "Calculate 5 - 3 - 6."}, {"role": "assistant", "content": "Answer: -4"}],
]


@pytest.fixture()
def chat_file(tmp_path: Path) -> Path:
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in CHATS * 4))
    return path


def sft_args(model_dir, data, out, *extra) -> list[str]:
    return ["sft", f"model.name={model_dir}", f"data.train={data}", f"output_dir={out}",
            "train.max_steps=16", "train.micro_batch_size=4", "train.lr=0.01", "train.warmup_steps=0",
            "train.schedule=constant", "train.progress=false", "train.tensorboard=false", "data.max_length=64",
            "lora.r=16", "lora.alpha=32", *extra]


def read_losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in lines if "loss" in row and not any(k.startswith("eval/") for k in row)]


def greedy(model, tokenizer, text: str = "What is 12 + 7?") -> list[int]:
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0].tolist()


@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_sft_cli_trains_and_saves_reloadable_model(method, tiny_model_dir, chat_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / f"run-{method}"
    assert main(sft_args(tiny_model_dir, chat_file, out, f"method={method}")) == 0
    losses = read_losses(out)
    assert len(losses) == 16
    # The loss goes down (a random 2-layer model: full FT falls fast, a LoRA adapter more slowly).
    assert sum(losses[-3:]) / 3 < losses[0] * (0.6 if method == "full" else 0.95), losses
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    assert (out / "config.yaml").is_file() and (out / "plots" / "loss.png").stat().st_size > 1000
    final = out / "final"
    assert not list(final.glob("*.bin")) and list(final.glob("*.safetensors"))
    tok = AutoTokenizer.from_pretrained(final)
    if method == "full":
        reloaded = AutoModelForCausalLM.from_pretrained(final)
    else:
        from peft import AutoPeftModelForCausalLM

        reloaded = AutoPeftModelForCausalLM.from_pretrained(final)
        assert json.loads((final / "adapter_config.json").read_text())["use_dora"] is (method == "dora")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert greedy(reloaded, tok) != greedy(base, tok) or method != "full"


def test_saved_model_generates_same_tokens_as_before_saving(tiny_model_dir, chat_file, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polm.config import load_config
    from polm.recipes.sft import SFTConfig, run_sft

    cfg = load_config(SFTConfig, None, sft_args(tiny_model_dir, chat_file, tmp_path / "run")[1:])
    result = run_sft(cfg)
    tok = AutoTokenizer.from_pretrained(result["final_dir"])
    in_memory = greedy(result["model"].eval(), tok)
    reloaded = AutoPeftModelForCausalLM.from_pretrained(result["final_dir"]).eval()
    assert greedy(reloaded, tok) == in_memory

    merged_dir = tmp_path / "merged"
    assert main(["export", "--model", result["final_dir"], "--out", str(merged_dir)]) == 0
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert greedy(merged, AutoTokenizer.from_pretrained(merged_dir)) == in_memory


def test_continued_pretraining_on_plain_text(tiny_model_dir, tmp_path):
    data = tmp_path / "text.jsonl"
    texts = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France."]
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts * 6))
    out = tmp_path / "cpt"
    assert main(sft_args(tiny_model_dir, data, out, "method=lora")) == 0
    losses = read_losses(out)
    assert sum(losses[-3:]) / 3 < losses[0] * 0.95, losses


def test_resume_after_interruption_matches_uninterrupted(tiny_model_dir, chat_file, tmp_path):
    full = tmp_path / "full"
    assert main(sft_args(tiny_model_dir, chat_file, full, "train.save_every=4")) == 0
    part = tmp_path / "part"
    assert main(sft_args(tiny_model_dir, chat_file, part, "train.save_every=4", "train.max_steps=8",
                         "train.schedule=constant")) == 0
    # The same directory continued to 12 steps from its step-8 checkpoint.
    (part / "run.json").write_text(json.dumps({"status": "running"}))
    (part / "final").rename(tmp_path / "old-final")
    assert main(sft_args(tiny_model_dir, chat_file, part, "train.save_every=4")) == 0
    assert read_losses(part) == pytest.approx(read_losses(full), abs=1e-6)


BAD = {
    "malformed_jsonl": ('{"messages": [}\n', "bad.jsonl:1"),
    "missing_field": ('{"prompt": "hi"}\n', "completion"),
    "empty": ("", "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_one_clear_line(case, tiny_model_dir, tmp_path, capsys):
    content, expected = BAD[case]
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    out = tmp_path / "run"
    assert main(sft_args(tiny_model_dir, data, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


@pytest.mark.parametrize("override, expected", [
    ("lora.rank=4", "Did you mean 'lora.r'"),
    ("train.lr=fast", "expects float"),
    ("data.train=/nonexistent/data.jsonl", "does not exist"),
    ("model.name=/nonexistent/model", "not a local directory"),
    ("model.name=no-such-org/no-such-model", "hub is offline"),
    ("method=qlora", "needs a CUDA GPU"),
])
def test_bad_config_is_one_clear_line(override, expected, tiny_model_dir, chat_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(sft_args(tiny_model_dir, chat_file, out, override)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


def test_bad_input_has_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "polm.cli", "sft", "train.lr=fast"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "expects float" in proc.stderr


def test_the_same_seed_builds_the_same_lora_policy_twice_in_one_process(tiny_model_dir, chat_file, tmp_path):
    # the recipe seeds before the adapter's random init (lora_A), not only in the loop after it
    from safetensors.torch import load_file

    adapters = []
    for run in ("a", "b"):
        assert main(sft_args(tiny_model_dir, chat_file, tmp_path / run, "train.max_steps=1", "train.seed=3")) == 0
        adapters.append(load_file(tmp_path / run / "final" / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys() and any("lora_A" in k for k in adapters[0])
    for key in adapters[0]:
        assert torch.equal(adapters[0][key], adapters[1][key]), key


def test_packed_rows_train_per_segment_by_default_with_the_mask_paths_losses(tiny_model_dir, chat_file, tmp_path,
                                                                              monkeypatch):
    """data.packed_attention=segment (the default) runs attention per packed example and trains the same
    losses and gradient norms as transformers' block-diagonal mask (data.packed_attention=mask)."""
    import polm.models.attention as attention

    calls = []
    real = attention.segment_sdpa_forward
    monkeypatch.setattr(attention, "segment_sdpa_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    runs = {}
    for mode in ("segment", "mask"):
        out = tmp_path / mode
        extra = ["train.max_steps=4"] + ([] if mode == "segment" else [f"data.packed_attention={mode}"])
        assert main(sft_args(tiny_model_dir, chat_file, out, *extra)) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[mode] = [(r["loss"], r["grad_norm"]) for r in rows if "loss" in r and "grad_norm" in r]
        if mode == "segment":
            assert len(calls) > 0
            calls.clear()
    assert calls == [] and len(runs["segment"]) == 4
    for (loss_s, norm_s), (loss_m, norm_m) in zip(runs["segment"], runs["mask"]):
        assert loss_s == pytest.approx(loss_m, rel=1e-5) and norm_s == pytest.approx(norm_m, rel=1e-4)
