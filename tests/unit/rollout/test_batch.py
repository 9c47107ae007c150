"""Rollout examples → training tensors by hand; the training logprobs equal the sampling logprobs;
the rollout stream serves μ epochs and resumes from its state exactly."""

import json

import pytest
import torch
from conftest import LargestTensor

from polm.rollout import HFGenerator, SamplingConfig
from polm.rollout.batch import collate_rollout, policy_forward
from polm.rollout.stream import RolloutStream
from polm.train.batches import BatchSource


def test_collate_left_pads_prompts_and_right_pads_completions():
    examples = [{"prompt_ids": [5, 6], "completion_ids": [7], "old_logprobs": [-0.5], "advantage": 1.5},
                {"prompt_ids": [8], "completion_ids": [9, 10], "old_logprobs": [-1.0, -2.0], "advantage": -0.5}]
    b = collate_rollout(examples, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0], [0, 8, 9, 10]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 2], [0, 0, 1, 2]]
    assert b["completion_ids"].tolist() == [[7, -100], [9, 10]]
    assert b["completion_mask"].tolist() == [[True, False], [True, True]]
    assert b["old_logprobs"].tolist() == [[-0.5, 0.0], [-1.0, -2.0]]
    assert b["advantage"].tolist() == [1.5, -0.5]


def test_training_forward_reproduces_the_sampling_logprobs(tiny_llama, tiny_tokenizer):
    prompts = [tiny_tokenizer(p, add_special_tokens=False)["input_ids"] for p in ["Hello", "What is 12 + 7?"]]
    comps = HFGenerator(tiny_llama, tiny_tokenizer).generate(prompts, SamplingConfig(n=2, max_new_tokens=5,
                                                                                     temperature=0.8), seed=1)
    examples = [{"prompt_ids": prompts[c.prompt_index], "completion_ids": c.token_ids, "old_logprobs": c.logprobs}
                for c in comps]
    batch = collate_rollout(examples, tiny_tokenizer.pad_token_id)
    m = batch["completion_mask"]
    for chunk_size in (4, None):   # the fused head and the logits path
        with torch.no_grad():
            lp = policy_forward(tiny_llama, batch, temperature=0.8, chunk_size=chunk_size).logprobs
        torch.testing.assert_close(lp[m], batch["old_logprobs"][m], atol=1e-5, rtol=1e-5)   # ratio 1 on-policy


def _rollout_batch(vocab: int, rows: int = 6, completion: int = 12) -> dict:
    g = torch.Generator().manual_seed(0)
    examples = [{"prompt_ids": torch.randint(3, vocab, (2 + i % 3,), generator=g).tolist(),
                 "completion_ids": torch.randint(3, vocab, (completion - i % 4,), generator=g).tolist()}
                for i in range(rows)]
    return collate_rollout(examples, pad_id=0)


def _policy_pass(model, batch, upstream, chunk_size):
    model.zero_grad()
    out = policy_forward(model, batch, 0.7, entropy=True, hidden=True, chunk_size=chunk_size)
    ((out.logprobs * upstream).sum() + out.hidden.square().mean()).backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora_targets", [None, ["q_proj", "v_proj"], ["q_proj", "lm_head"]])
def test_fused_policy_forward_equals_the_logits_path(tiny_llama, lora_targets):
    """logprobs, entropy, hidden states (PPO's value head) and every gradient agree with the
    model's logits path, for full fine-tuning (tied head trained), LoRA, and LoRA on lm_head (fallback)."""
    model = tiny_llama.train()
    if lora_targets:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=lora_targets, init_lora_weights=False))
    batch = _rollout_batch(tiny_llama.config.vocab_size)
    upstream = torch.randn(batch["completion_ids"].shape, generator=torch.Generator().manual_seed(1))
    fused, grads_f = _policy_pass(model, batch, upstream, chunk_size=5)
    plain, grads_p = _policy_pass(model, batch, upstream, chunk_size=None)
    m = batch["completion_mask"]
    torch.testing.assert_close(fused.logprobs, plain.logprobs, atol=1e-5, rtol=1e-5)
    assert (fused.logprobs[~m] == 0).all()
    torch.testing.assert_close(fused.entropy[m], plain.entropy[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused.hidden, plain.hidden, atol=1e-6, rtol=1e-6)
    assert grads_f.keys() == grads_p.keys() and grads_p
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], atol=1e-5, rtol=1e-4)


def test_policy_forward_never_builds_the_completion_logits(tiny_llama):
    batch = _rollout_batch(tiny_llama.config.vocab_size)
    B, C = batch["completion_ids"].shape
    sizes = {}
    for chunk_size in (4, None):
        with LargestTensor() as probe:
            out = policy_forward(tiny_llama, batch, 0.7, entropy=True, chunk_size=chunk_size)
            out.logprobs.sum().backward()
        sizes[chunk_size] = probe.largest
    assert sizes[None] >= B * C * tiny_llama.config.vocab_size > sizes[4]


def _stream(calls):
    def make_rollout(records, index):
        calls.append((index, [r["q"] for r in records]))
        return [{"prompt_ids": [r["q"]], "completion_ids": [index, j], "old_logprobs": [0.1 * j, 0.2]}
                for r in records for j in range(2)], {"reward/mean": float(index)}

    prompts = [{"q": i} for i in range(6)]
    return RolloutStream(prompts, make_rollout, lambda ex: collate_rollout(ex, 0), prompts_per_rollout=2,
                         group_size=2, epochs=2, micro_batch_size=2, grad_accum=1, seed=3)


def test_stream_serves_each_rollout_mu_times_and_resumes_exactly():
    calls: list = []
    stream = _stream(calls)
    served, metrics = [], []
    for _ in range(4):                               # one rollout of 4 completions, 2 epochs of 2 micro-batches
        served.append(next(stream))
        metrics.append(stream.step_metrics())        # grad_accum=1: the loop asks after every micro-batch
    assert len(calls) == 1
    first_epoch = sorted(t for b in served[:2] for t in b["completion_ids"][:, 1].tolist())
    second_epoch = sorted(t for b in served[2:] for t in b["completion_ids"][:, 1].tolist())
    assert first_epoch == second_epoch == [0, 0, 1, 1]
    assert all("rollout_metrics" not in b for b in served)          # metrics travel on their own channel
    assert [m["reward/mean"] for m in metrics] == [0.0] * 4
    assert metrics[0]["time/generation_s"] > 0 and [m["time/generation_s"] for m in metrics[1:]] == [0.0] * 3
    assert isinstance(stream, BatchSource)
    next(stream)                                     # mid-way through the second rollout
    state = json.loads(json.dumps(stream.state_dict()))
    rest = [(next(stream), stream.step_metrics()["reward/mean"]) for _ in range(5)]
    again = _stream([])
    again.load_state_dict(state)
    for a, reward_mean in rest:
        b = next(again)
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["old_logprobs"], b["old_logprobs"])
        assert again.step_metrics()["reward/mean"] == reward_mean      # the rollout's metrics resume too
