"""Rollout examples → training tensors by hand; the training logprobs equal the sampling logprobs;
the rollout stream serves μ epochs and resumes from its state exactly."""

import json

import torch

from polm.rollout import HFGenerator, SamplingConfig
from polm.rollout.batch import collate_rollout, completion_logprobs, policy_forward
from polm.rollout.stream import RolloutStream


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
    with torch.no_grad():
        logits, _ = policy_forward(tiny_llama, batch, temperature=0.8)
    lp = completion_logprobs(logits, batch)
    m = batch["completion_mask"]
    torch.testing.assert_close(lp[m], batch["old_logprobs"][m], atol=1e-5, rtol=1e-5)   # ratio 1 on-policy


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
    served = [next(stream) for _ in range(4)]       # one rollout of 4 completions, 2 epochs of 2 micro-batches
    assert len(calls) == 1
    first_epoch = sorted(t for b in served[:2] for t in b["completion_ids"][:, 1].tolist())
    second_epoch = sorted(t for b in served[2:] for t in b["completion_ids"][:, 1].tolist())
    assert first_epoch == second_epoch == [0, 0, 1, 1]
    assert [("time/generation_s" in b["rollout_metrics"]) for b in served] == [True] * 4
    next(stream)                                     # mid-way through the second rollout
    state = json.loads(json.dumps(stream.state_dict()))
    rest = [next(stream) for _ in range(5)]
    again = _stream([])
    again.load_state_dict(state)
    for a, b in zip(rest, [next(again) for _ in range(5)]):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["old_logprobs"], b["old_logprobs"])
