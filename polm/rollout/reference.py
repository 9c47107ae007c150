"""The reference policy of RL's KL term: the starting model as a `polm.models.frozen.FrozenModel`,
and its log-probs on the completion tokens of rollout examples."""

from __future__ import annotations

from polm.models.frozen import MODEL_KEYS, FrozenModel
from polm.rollout.batch import collate_rollout

CHUNK_SIZE = 256   # rows of logits at a time, as `polm.rollout.batch.policy_forward` scores the policy


def rl_reference(policy, method: str, beta: float) -> FrozenModel | None:
    """None when beta = 0 (no KL term); LoRA's base (adapter off) or a frozen copy of the full model."""
    if beta == 0:
        return None
    return FrozenModel.adapter_disabled(policy) if method == "lora" else FrozenModel.copy_of(policy)


def add_reference_logprobs(reference: FrozenModel, examples: list[dict], pad_id: int, micro_batch_size: int,
                           temperature: float = 1.0) -> None:
    """examples[i]['ref_logprobs'] = log π_ref(completion token) under softmax(logits / T), [C_i] per
    example, computed `micro_batch_size` examples per forward (the batches the policy trains on)."""
    for i in range(0, len(examples), micro_batch_size):
        chunk = examples[i:i + micro_batch_size]
        batch = {k: v.to(reference.device) for k, v in collate_rollout(chunk, pad_id).items()}
        lps = reference.token_logprobs({k: batch[k] for k in MODEL_KEYS}, batch["completion_ids"],
                                       chunk_size=CHUNK_SIZE, temperature=temperature, offset=1)
        for row, ex in enumerate(chunk):
            ex["ref_logprobs"] = lps[row, :len(ex["completion_ids"])].tolist()
