"""The DPO recipe's precomputed reference: computed under the training precision, keyed by it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from polm.config import load_config
from polm.data.collate import pack_collate
from polm.models import attach_adapter, load_model, load_tokenizer
from polm.models.reference import completion_logps
from polm.recipes.dpo import DPOConfig, build_reference, make_collate, prepare_data
from polm.train.loop import autocast_context

PAIRS = [{"prompt": f"What is {a} + {b}?", "chosen": f"The answer is {a + b}.", "rejected": f"hello world {a}"}
         for a in range(3) for b in range(2)]


def setup(model_dir: Path, tmp_path: Path, precision: str):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    cfg = load_config(DPOConfig, None, [f"model.name={model_dir}", f"data.train={data}", "data.max_length=64",
                                        "model.dtype=fp32", "reference.mode=precompute",
                                        f"reference.cache_dir={tmp_path / 'cache'}", f"train.precision={precision}"])
    tokenizer = load_tokenizer(cfg.model.name)
    examples, _, _ = prepare_data(cfg, tokenizer, unpaired=False)
    model = attach_adapter(load_model(cfg.model), cfg.lora)
    return cfg, tokenizer, examples, model, make_collate(cfg, tokenizer, unpaired=False)


def test_precompute_runs_under_the_training_autocast(tiny_model_dir, tmp_path):
    # fp32 weights + bf16 autocast: at step 1 the policy (a fresh adapter) is scored under autocast, so the
    # reference must be too, or log πθ/πref ≠ 0 and the first loss is not log 2
    cfg, tokenizer, examples, model, collate = setup(tiny_model_dir, tmp_path, "bf16")
    build_reference(cfg, model, tokenizer, examples, collate)
    seqs = [s for ex in examples for s in (ex["chosen"], ex["rejected"])]
    size, cpu = cfg.reference.batch_size, torch.device("cpu")
    batches = [pack_collate(seqs[i:i + size]) for i in range(0, len(seqs), size)]   # the pass's grouping
    with torch.no_grad(), autocast_context("bf16", cpu):
        policy = torch.cat([completion_logps(model, b, cfg.loss_chunk_size)[0].float() for b in batches])
    with torch.no_grad():
        fp32 = torch.cat([completion_logps(model, b, cfg.loss_chunk_size)[0] for b in batches])
    assert (policy - fp32).abs().max() > 1e-4          # the two precisions do differ on this model
    torch.testing.assert_close(torch.tensor([ex["ref"] for ex in examples]).flatten(), policy, atol=1e-6, rtol=0)


def test_precompute_cache_is_keyed_by_precision(tiny_model_dir, tmp_path):
    hits = []
    for precision in ("bf16", "fp32", "fp32"):
        cfg, tokenizer, examples, model, collate = setup(tiny_model_dir, tmp_path, precision)
        hits.append(build_reference(cfg, model, tokenizer, examples, collate)[1]["cache_hit"])
    assert hits == [False, False, True]
