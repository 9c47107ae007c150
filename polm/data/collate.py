"""Examples -> tensors: right padding, or padding-free packing of a micro-batch into one row.

Packing relies on transformers (5.x) to keep examples apart: with `attention_mask=None`, no KV
cache and `position_ids` that restart at 0, `masking_utils.find_packed_sequence_indices` turns the
restarts into a block-diagonal causal mask (sdpa and eager: tested here; flex uses the same mask
function), and flash-attention derives its varlen `cu_seq_lens` from the same restarts
(`_is_packed_sequence`, independent of the cache). The model MUST be called with `use_cache=False`:
with a cache (the config default), transformers skips the detection and tokens attend across
examples. `polm.ops.logprobs` passes it for every recipe; tests/unit/data/test_collate.py checks
both the parity and the leak. `polm.models.attention.packed_attention` replaces the mask with attention
per segment (the SFT default).
"""

from __future__ import annotations

import torch

from polm.errors import PolmError

IGNORE_INDEX = -100


def pad_collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example.  -> input_ids, attention_mask, labels: LongTensor [B, T].

    Padding gets input id `pad_id`, attention 0 and label -100.
    """
    if pad_id is None:
        raise PolmError("padding needs a pad token, and the tokenizer has none",
                        fix="Set tokenizer.pad_token (often to the eos token), or use packing.")
    width = max(len(ex["input_ids"]) for ex in examples)
    batch = {key: torch.full((len(examples), width), fill, dtype=torch.long)
             for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX))}
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        batch["input_ids"][row, :n] = torch.tensor(ex["input_ids"])
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = torch.tensor(ex["labels"])
    return batch


def pack_collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Concatenate examples into one row.  -> input_ids, position_ids, labels: LongTensor [1, ΣT].

    position_ids restart at 0 for every example (that is what marks the boundaries); there is no
    attention_mask, on purpose (a 2-D mask would switch off packed-sequence detection). labels at
    each example's first token are -100, so no example learns its first token from the previous one.
    """
    ids, positions, labels = [], [], []
    for ex in examples:
        n = len(ex["input_ids"])
        ids += ex["input_ids"]
        positions += range(n)
        labels += [IGNORE_INDEX, *ex["labels"][1:]]
    return {key: torch.tensor([values], dtype=torch.long)
            for key, values in (("input_ids", ids), ("position_ids", positions), ("labels", labels))}


def target_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Σ_t [labels[:, t+1] != -100]: the number of next-token predictions the loss averages over."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
