"""Collators: padding masks, and padding-free packing that gives each example exactly its own logprobs."""

from __future__ import annotations

import pytest
import torch

from polm.data.collate import IGNORE_INDEX, pack_collate, pad_collate, target_token_count
from polm.errors import PolmError

X = IGNORE_INDEX
EXAMPLES = [
    {"input_ids": [5, 6, 7], "labels": [X, 6, 7]},
    {"input_ids": [8, 9], "labels": [8, 9]},
    {"input_ids": [10, 11, 12, 13], "labels": [X, X, 12, X]},
]


def test_pad_collate_right_pads_and_masks():
    batch = pad_collate(EXAMPLES, pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.shape == (3, 4) and t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 9, 0, 0], [10, 11, 12, 13]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[X, 6, 7, X], [8, 9, X, X], [X, X, 12, X]]
    with pytest.raises(PolmError, match="needs a pad token"):
        pad_collate(EXAMPLES, pad_id=None)


def test_pack_collate_restarts_positions_and_masks_each_first_token():
    batch = pack_collate(EXAMPLES)
    assert set(batch) == {"input_ids", "position_ids", "labels"}  # no attention_mask, on purpose
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    # example 2's label 8 sits at its first token: predicting it would use example 1's last token
    assert batch["labels"].tolist() == [[X, 6, 7, X, 9, X, X, 12, X]]


def test_target_token_count_hand_counted():
    # padded: row 0 predicts 6, 7; row 1 predicts 9 (its label 8 at t=0 has no predecessor); row 2: 12
    assert target_token_count(pad_collate(EXAMPLES, pad_id=0)) == 4
    assert target_token_count(pack_collate(EXAMPLES)) == 4
    assert target_token_count({"labels": torch.tensor([[1, 2, 3], [X, X, X]])}) == 2


# --- packing through a real model -----------------------------------------------------------------

def make_examples(lengths, seed=0, vocab=397):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(4, vocab, (n,), generator=g).tolist(), "labels": [0] * n} for n in lengths]


def next_token_logprobs(logits, ids):
    """log p(ids[t+1] | ids[:t+1]) for t < T-1 — a plain computation, independent of polm.ops."""
    return torch.log_softmax(logits[:-1].double(), -1).gather(-1, ids[1:, None]).squeeze(-1)


def packed_logprobs(model, examples, **forward_kwargs):
    batch = pack_collate(examples)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **forward_kwargs).logits[0]
    out, start = [], 0
    for ex in examples:
        n = len(ex["input_ids"])
        out.append(next_token_logprobs(logits[start:start + n], batch["input_ids"][0, start:start + n]))
        start += n
    return out


def alone_logprobs(model, examples):
    out = []
    for ex in examples:
        ids = torch.tensor([ex["input_ids"]])
        with torch.no_grad():
            out.append(next_token_logprobs(model(input_ids=ids).logits[0], ids[0]))
    return out


def padded_logprobs(model, examples):
    batch = pad_collate(examples, pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return [next_token_logprobs(logits[i, :len(ex["input_ids"])], batch["input_ids"][i, :len(ex["input_ids"])])
            for i, ex in enumerate(examples)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_row_equals_each_example_alone_and_padded(tiny_llama, attn):
    tiny_llama.set_attn_implementation(attn)
    examples = make_examples([7, 3, 11, 5])
    packed = packed_logprobs(tiny_llama, examples, use_cache=False)
    for got, single, padded in zip(packed, alone_logprobs(tiny_llama, examples), padded_logprobs(tiny_llama, examples)):
        torch.testing.assert_close(got, single, atol=1e-5, rtol=0)
        torch.testing.assert_close(got, padded, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_attention_leaks_from_one_packed_example_into_the_next(tiny_llama, attn):
    tiny_llama.set_attn_implementation(attn)
    examples = make_examples([6, 8])
    changed = [{**examples[0], "input_ids": [(t + 17) % 397 for t in examples[0]["input_ids"]]}, examples[1]]
    before = packed_logprobs(tiny_llama, examples, use_cache=False)
    after = packed_logprobs(tiny_llama, changed, use_cache=False)
    assert (before[0] - after[0]).abs().max() > 1e-2  # the change is visible where it should be ...
    torch.testing.assert_close(after[1], before[1], atol=1e-6, rtol=0)  # ... and nowhere else


def test_transformers_leaks_across_packed_examples_when_a_cache_is_used(tiny_llama):
    """Why polm.ops calls the model with use_cache=False: with the config default (use_cache=True)
    a KV cache exists and transformers skips packed-sequence detection, so attention crosses examples."""
    assert tiny_llama.config.use_cache is True
    examples = make_examples([6, 8])
    leaked = packed_logprobs(tiny_llama, examples)[1]
    assert (leaked - alone_logprobs(tiny_llama, examples)[1]).abs().max() > 1e-3


def test_recipe_loss_on_a_packed_row_is_the_sum_of_each_example_alone(tiny_llama):
    from polm.ops.logprobs import causal_lm_loss

    examples = make_examples([7, 3, 11, 5], seed=1)
    for ex in examples:
        ex["labels"] = [X, X, *ex["input_ids"][2:]]  # the first two tokens are prompt
    packed = pack_collate(examples)
    with torch.no_grad():
        total, count = causal_lm_loss(tiny_llama, packed, chunk_size=None)
        parts = [causal_lm_loss(tiny_llama, pad_collate([ex], pad_id=0), chunk_size=None) for ex in examples]
    assert count == target_token_count(packed) == sum(n for _, n in parts) == sum(len(ex["labels"]) - 2 for ex in examples)
    torch.testing.assert_close(total, sum(loss for loss, _ in parts), atol=1e-4, rtol=0)
