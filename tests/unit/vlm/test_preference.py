"""Image-conditioned preference pairs: records, label pairs, batches of chosen-then-rejected rows, log-probs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polm.errors import PolmError
from polm.ops.logprobs import IGNORE_INDEX
from polm.vlm.data import classification_record
from polm.vlm.features import image_inputs
from polm.vlm.preference import encode_pair, label_pairs, normalize_pair, pair_collate, sequence_logps

IMG = np.arange(256, dtype=np.uint8).reshape(16, 16)


def test_a_pair_shares_images_and_prompt():
    pair = normalize_pair({"image": IMG, "prompt": "What is this?", "chosen": "hello", "rejected": "world"}, "p:1")
    assert pair["chosen"]["messages"][:-1] == pair["rejected"]["messages"][:-1]
    assert [pair[s]["messages"][-1]["content"] for s in ("chosen", "rejected")] == ["hello", "world"]
    assert pair["chosen"]["images"][0] is pair["rejected"]["images"][0]


def test_bad_pairs_are_clear_errors():
    with pytest.raises(PolmError, match="p:2: 'chosen' and 'rejected' are the same answer"):
        normalize_pair({"image": IMG, "prompt": "q", "chosen": "a", "rejected": " a"}, "p:2")
    with pytest.raises(PolmError, match="needs 'chosen' and 'rejected' strings"):
        normalize_pair({"image": IMG, "prompt": "q", "chosen": "a"}, "p:3")


def test_label_pairs_reject_another_class():
    records = [{**classification_record(IMG, label, "What?", f"r{i}"), "images": [IMG]}
               for i, label in enumerate(["a", "b", "c", "a"])]
    pairs = label_pairs(records, seed=0)
    for rec, pair in zip(records, pairs):
        assert pair["chosen"]["messages"][-1]["content"] == rec["label"]
        assert pair["rejected"]["messages"][-1]["content"] in {"a", "b", "c"} - {rec["label"]}


def test_batch_rows_and_sequence_logps(vlm, tiny_tokenizer):
    pairs = [normalize_pair({"image": IMG + i, "prompt": "What is this?", "chosen": c, "rejected": r}, f"p:{i}")
             for i, (c, r) in enumerate([("hello", "world"), ("good morning", "thanks")])]
    examples = [encode_pair(p, tiny_tokenizer, vlm.spec.tokens_per_image, max_length=200) for p in pairs]
    examples[0]["ref"], examples[1]["ref"] = (-1.0, -2.0), (-3.0, -4.0)
    batch = pair_collate(examples, tiny_tokenizer.pad_token_id, image_inputs(vlm.tower, None))
    assert batch["input_ids"].shape[0] == 4 and batch["ref_logps"].tolist() == [-1.0, -3.0, -2.0, -4.0]
    answers = [tiny_tokenizer.decode(row[lab != IGNORE_INDEX]) for row, lab in zip(batch["input_ids"], batch["labels"])]
    assert answers == ["hello<|im_end|>", "good morning<|im_end|>", "world<|im_end|>", "thanks<|im_end|>"]
    with torch.no_grad():
        logps, tokens = sequence_logps(vlm, batch)
        ex = examples[1]["rejected"]     # row 3, alone and unpadded, by hand
        ids = torch.tensor([ex["input_ids"]])
        px = image_inputs(vlm.tower, None)(ex["images"])["pixel_values"]
        logp = torch.log_softmax(vlm(ids, pixel_values=px).logits[0].double(), -1)
    by_hand = sum(logp[t - 1, ex["input_ids"][t]].item() for t in range(1, len(ex["input_ids"]))
                  if ex["labels"][t] != IGNORE_INDEX)
    assert logps[3].item() == pytest.approx(by_hand, abs=1e-4)
    assert tokens.tolist() == [len(tiny_tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]
