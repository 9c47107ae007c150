"""Rollout examples → padded training tensors, and the policy's logprobs on the completion tokens.

An example is plain JSON data (so a checkpoint can store a half-used rollout exactly): prompt_ids,
completion_ids, and per-completion-token lists (old_logprobs, ref_logprobs, token advantages,
returns, values) or per-completion scalars (a GRPO advantage).
"""

from __future__ import annotations

import torch

from polm.ops import IGNORE_INDEX, token_logprobs

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


def policy_forward(model, batch: dict, temperature: float = 1.0, *, hidden: bool = False):
    """Model outputs for the completion part only: logits [B,C,V] predicting each completion token
    (scaled by 1/temperature, as they were sampled) and, with `hidden`, the last hidden states [B,C,H]."""
    C = batch["completion_ids"].shape[1]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False, logits_to_keep=C + 1,
                output_hidden_states=hidden)
    logits = out.logits[:, :-1]
    if temperature != 1.0:
        logits = logits / temperature
    states = out.hidden_states[-1][:, -C - 1:-1] if hidden else None
    return logits, states


def completion_logprobs(logits: torch.Tensor, batch: dict, chunk_size: int | None = 1024) -> torch.Tensor:
    """log π(completion token) [B,C] (0 on padding) from `policy_forward` logits."""
    return token_logprobs(logits, batch["completion_ids"], chunk_size)


@torch.no_grad()
def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) - Σ softmax(z) z per position, for metrics.  [B,C,V] -> [B,C]."""
    z = logits.float()
    return z.logsumexp(-1) - (z.softmax(-1) * z).sum(-1)
