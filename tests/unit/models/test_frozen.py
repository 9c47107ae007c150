"""The frozen model: DPO's precomputed reference (computed under the training precision, keyed by it),
the adapter-disabled / copy / separately loaded modes, the on-disk cache, and RL's reference log-probs."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pytest
import torch

from polm.config import load_config
from polm.data.collate import pack_collate
from polm.errors import PolmError
from polm.models import FrozenModel, LoraConfig, ModelConfig, attach_adapter, load_model, load_tokenizer
from polm.models.frozen import cached_outputs, completion_logps
from polm.recipes.dpo import DPOConfig, build_reference, make_collate, prepare_data
from polm.rollout.batch import collate_rollout, policy_forward
from polm.rollout.reference import add_reference_logprobs, rl_reference
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


def randomized_lora(model_dir: Path):
    """A LoRA policy on the tiny model whose adapter changes the outputs (B starts at 0), in train mode."""
    torch.manual_seed(0)
    model = attach_adapter(load_model(ModelConfig(name=str(model_dir), device="cpu", dtype="fp32")),
                           LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model.train()


def plain_token_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[next token] from a full-logits forward: [B, L-1]."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    return logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


IDS = torch.tensor([[5, 9, 30, 2, 44, 7], [3, 8, 8, 1, 60, 12]])


def test_adapter_disabled_scores_the_base_and_gives_the_policy_its_training_mode_back(tiny_model_dir):
    policy = randomized_lora(tiny_model_dir)
    base = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="fp32")).eval()
    frozen = FrozenModel.adapter_disabled(policy)
    got = frozen.token_logprobs({"input_ids": IDS}, IDS[:, 1:], offset=1)   # position t predicts token t + 1
    assert policy.training and not got.requires_grad
    torch.testing.assert_close(got, plain_token_logprobs(base, IDS), atol=1e-5, rtol=1e-5)
    policy.eval()
    assert (got - plain_token_logprobs(policy, IDS)).abs().max() > 1e-3   # the adapter was off, not ignored
    sums, counts = frozen.sequence_logps({"input_ids": IDS, "labels": IDS})
    torch.testing.assert_close(sums, got.sum(-1), atol=1e-5, rtol=1e-5)
    assert counts.tolist() == [5.0, 5.0]


def test_adapter_mode_needs_a_peft_policy(tiny_llama):
    with pytest.raises(PolmError, match="needs a LoRA/DoRA policy"):
        FrozenModel.adapter_disabled(tiny_llama)


def test_copy_keeps_the_policy_as_it_was(tiny_model_dir):
    policy = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="fp32")).train()
    before = plain_token_logprobs(policy.eval(), IDS)
    frozen = FrozenModel.copy_of(policy.train())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05)                                   # the policy trains on
    assert not any(p.requires_grad for p in frozen.model.parameters()) and policy.training
    torch.testing.assert_close(frozen.token_logprobs({"input_ids": IDS}, IDS[:, 1:], offset=1), before, atol=1e-6, rtol=0)


def test_load_is_a_separate_model_with_its_own_tokenizer(tiny_model_dir):
    frozen = FrozenModel.load(str(tiny_model_dir), device="cpu", dtype="fp32")
    assert frozen.kind == "loaded" and frozen.tokenizer is not None and not frozen.model.training
    assert frozen.source == str(tiny_model_dir) and not any(p.requires_grad for p in frozen.model.parameters())
    ids = torch.tensor([frozen.tokenizer("What is 12 + 7? The answer is 19.")["input_ids"]])
    reference = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="fp32")).eval()
    torch.testing.assert_close(frozen.token_logprobs({"input_ids": ids}, ids[:, 1:], offset=1),
                               plain_token_logprobs(reference, ids),
                               atol=1e-5, rtol=1e-5)
    key = frozen.cache_key([ids[0].tolist()], frozen.tokenizer.chat_template, {"dtype": "fp32"})
    assert key == FrozenModel.load(str(tiny_model_dir), device="cpu").cache_key(
        [ids[0].tolist()], frozen.tokenizer.chat_template, {"dtype": "fp32"})
    assert key != frozen.cache_key([ids[0].tolist()[:-1]], frozen.tokenizer.chat_template, {"dtype": "fp32"})


def test_cached_outputs_are_any_named_tensors_written_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"topk_logps": torch.tensor([[-0.1, -2.3], [-0.5, -1.0]]), "topk_ids": torch.tensor([[3, 7], [1, 2]])}

    first, hit1 = cached_outputs("k", tmp_path, compute)
    again, hit2 = cached_outputs("k", tmp_path, compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert again["topk_ids"].dtype == torch.long and torch.equal(again["topk_ids"], first["topk_ids"])
    torch.testing.assert_close(again["topk_logps"], first["topk_logps"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.safetensors"]   # no temp file left


def old_add_reference_logprobs(reference, examples, pad_id, micro_batch_size, temperature):
    """What `polm grpo` computed before the frozen model existed (recipes/grpo.add_reference_logprobs)."""
    off = getattr(reference, "disable_adapter", None)
    was_training = reference.training
    reference.eval()
    with torch.no_grad():
        for i in range(0, len(examples), micro_batch_size):
            chunk = examples[i:i + micro_batch_size]
            batch = collate_rollout(chunk, pad_id)
            with off() if callable(off) else contextlib.nullcontext():
                lps = policy_forward(reference, batch, temperature).logprobs
            for row, ex in enumerate(chunk):
                ex["ref_logprobs"] = lps[row, :len(ex["completion_ids"])].tolist()
    reference.train(was_training)


ROLLOUT = [{"prompt_ids": [5, 9, 30], "completion_ids": [2, 44, 7, 7], "old_logprobs": [-1.0] * 4, "advantage": 0.5},
           {"prompt_ids": [3, 8], "completion_ids": [60, 12], "old_logprobs": [-2.0] * 2, "advantage": -0.5},
           {"prompt_ids": [11, 4, 4, 9], "completion_ids": [1], "old_logprobs": [-0.5], "advantage": 0.0}]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_rl_reference_logprobs_equal_the_old_grpo_values(tiny_model_dir, method):
    policy = randomized_lora(tiny_model_dir) if method == "lora" else \
        load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="fp32")).train()
    assert rl_reference(policy, method, beta=0.0) is None
    reference = rl_reference(policy, method, beta=0.04)
    assert reference.kind == ("adapter" if method == "lora" else "copy")
    new, old = copy.deepcopy(ROLLOUT), copy.deepcopy(ROLLOUT)
    add_reference_logprobs(reference, new, pad_id=0, micro_batch_size=2, temperature=0.7)
    old_add_reference_logprobs(policy if method == "lora" else copy.deepcopy(policy).eval(), old, 0, 2, 0.7)
    assert policy.training
    assert [len(e["ref_logprobs"]) for e in new] == [4, 2, 1]
    for a, b in zip(new, old):
        assert a["ref_logprobs"] == b["ref_logprobs"]
