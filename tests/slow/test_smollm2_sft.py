"""The embedded SmolLM2-135M-Instruct: a few LoRA steps on worked arithmetic lower the loss, and the
saved adapter reloads and generates the same tokens (minutes on CPU; run with `make test-slow`)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_lora_steps_lower_the_loss_on_smollm2(tmp_path, all_threads):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    from polm.config import load_config
    from polm.recipes.sft import SFTConfig, run_sft
    from polm.rollout import HFGenerator, SamplingConfig
    from polm.rollout.text import generate_text

    cfg = load_config(SFTConfig, None, [
        f"output_dir={tmp_path / 'run'}", "method=lora", "model.name=smollm2-135m-instruct",
        "data.train=builtin:reasoning-gym/basic_arithmetic?n=96&seed=5&min_terms=2&max_terms=2&max_digits=2",
        "data.max_length=128", "train.max_steps=12", "train.micro_batch_size=8", "train.lr=1e-3",
        "train.warmup_steps=2", "train.progress=false", "lora.r=8", "lora.target_modules=[q_proj,v_proj,o_proj]",
    ])
    result = run_sft(cfg)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses

    prompts = ["Calculate 12 + 7.", "Calculate 40 - 13."]
    greedy = SamplingConfig(n=1, max_new_tokens=16, temperature=0.0)
    tok = AutoTokenizer.from_pretrained(result["final_dir"])
    before_save = generate_text(HFGenerator(result["model"], tok), tok, prompts, greedy, seed=0)
    reloaded = AutoPeftModelForCausalLM.from_pretrained(result["final_dir"])
    assert generate_text(HFGenerator(reloaded, tok), tok, prompts, greedy, seed=0) == before_save
