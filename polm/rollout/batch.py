"""Rollout examples → padded training tensors, and the policy's logprobs on the completion tokens.

An example is plain JSON data (so a checkpoint can store a half-used rollout exactly): prompt_ids,
completion_ids, and per-completion-token lists (old_logprobs, ref_logprobs, token advantages,
returns, values) or per-completion scalars (a GRPO advantage).
"""

from __future__ import annotations

import torch

from polm.ops import IGNORE_INDEX, ModelLogprobs, model_logprobs

TOKEN_KEYS = ("old_logprobs", "ref_logprobs", "advantage", "returns", "old_values")


def collate_rollout(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts [B,P] + right-padded completions [B,C] as one row each.

    Returns input_ids, attention_mask, position_ids [B,P+C]; completion_ids (-100 on padding) and
    completion_mask [B,C]; every per-token key as float [B,C] and every scalar key as float [B].
    """
    P = max(len(e["prompt_ids"]) for e in examples)
    C = max(len(e["completion_ids"]) for e in examples)
    B = len(examples)
    ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + C), dtype=torch.long)
    targets = torch.full((B, C), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        p, c = e["prompt_ids"], e["completion_ids"]
        ids[i, P - len(p):P], ids[i, P:P + len(c)] = torch.tensor(p), torch.tensor(c)
        attn[i, P - len(p):P + len(c)] = 1
        targets[i, :len(c)] = torch.tensor(c)
    batch = {"input_ids": ids, "attention_mask": attn, "position_ids": (attn.cumsum(-1) - 1).clamp(min=0),
             "completion_ids": targets, "completion_mask": targets != IGNORE_INDEX}
    for key in TOKEN_KEYS:
        if key not in examples[0]:
            continue
        if isinstance(examples[0][key], list):
            padded = torch.zeros((B, C), dtype=torch.float32)
            for i, e in enumerate(examples):
                padded[i, :len(e[key])] = torch.tensor(e[key], dtype=torch.float32)
            batch[key] = padded
        else:
            batch[key] = torch.tensor([float(e[key]) for e in examples])
    return batch


def policy_forward(model, batch: dict, temperature: float = 1.0, *, entropy: bool = False, hidden: bool = False,
                   chunk_size: int | None = 256) -> ModelLogprobs:
    """log π(completion token) [B,C] (0 on padding) under softmax(logits / temperature), as the tokens
    were sampled; with `entropy` the entropy of that distribution [B,C] (a metric, no gradient), with
    `hidden` the last hidden states [B,C,H] that predict the completion tokens (PPO's value head).

    The completion tokens are the last C of each row, so positions -C-1..-2 predict them; on a plain
    output layer the [B,C,V] logits never exist (`polm.ops.model_logprobs`), only `chunk_size` rows of
    them at a time: 256 rows of SmolLM2's 49,152-token vocabulary are 50 MB in fp32, and were the
    fastest chunk measured (docs/training-loop.md).
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    return model_logprobs(model, inputs, batch["completion_ids"], chunk_size, temperature, offset=1,
                          entropy=entropy, hidden=hidden)
