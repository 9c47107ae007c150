"""Target rows of a model's output: the backbone shortcut gives the logits' own rows, in row-major order
of the target tokens; a packed batch gives the same rows as the padded one."""

from __future__ import annotations

import torch

from polm.data.collate import pack_collate, pad_collate
from polm.ops import IGNORE_INDEX, causal_targets
from polm.ops.divergence import target_rows

EXAMPLES = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]},
            {"input_ids": [10, 11, 12], "labels": [-100, 11, 12]}]


def test_shortcut_rows_are_the_logits_rows_and_packing_agrees(tiny_llama):
    padded = pad_collate(EXAMPLES, 0)
    targets = causal_targets(padded["labels"])
    inputs = {k: padded[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        short = target_rows(tiny_llama, inputs, targets, states=True)
        plain = target_rows(tiny_llama, inputs, targets, chunked=False, states=True)
        packed_batch = pack_collate(EXAMPLES)
        packed = target_rows(tiny_llama, {k: packed_batch[k] for k in ("input_ids", "position_ids")},
                             causal_targets(packed_batch["labels"], packed_batch["position_ids"]))
    assert short.targets.tolist() == plain.targets.tolist() == [7, 8, 9, 11, 12] == packed.targets.tolist()
    assert plain.weight is None and short.weight is not None
    assert torch.allclose(short.logits(0, 5), plain.hidden, atol=1e-5)
    assert torch.allclose(short.states, plain.states, atol=1e-6)
    assert torch.allclose(packed.logits(0, 5), plain.hidden, atol=1e-5)
    assert (targets != IGNORE_INDEX).sum() == 5
