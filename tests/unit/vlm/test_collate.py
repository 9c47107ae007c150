"""Image tokens where the chat template puts the image, labels on the answer only, truncation, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polm.data.templating import IGNORE_INDEX
from polm.errors import PolmError
from polm.vlm.collate import encode_image_record, encode_image_records, vlm_collate
from polm.vlm.data import normalize_record
from polm.vlm.model import IMAGE_TOKEN_ID

IMG = np.zeros((4, 4), np.uint8)


def record(prompt="What is 12 + 7?", answer="19", image=IMG):
    return {**normalize_record({"image": image, "prompt": prompt, "completion": answer}, "r:1"), "where": "r:1"}


def test_image_tokens_sit_where_the_template_puts_the_image(tiny_tokenizer):
    ex = encode_image_record(record(), tiny_tokenizer, 5, max_length=200)
    ids = ex["input_ids"]
    first = ids.index(IMAGE_TOKEN_ID)
    assert ids[first:first + 5] == [IMAGE_TOKEN_ID] * 5 and ids.count(IMAGE_TOKEN_ID) == 5
    assert tiny_tokenizer.decode(ids[:first]) == "<|im_start|>user\n"
    assert tiny_tokenizer.decode(ids[first + 5:]) == (
        "\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n19<|im_end|>\n")


def test_labels_cover_only_the_answer(tiny_tokenizer):
    ex = encode_image_record(record(), tiny_tokenizer, 5, max_length=200)
    targets = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(targets) == "19<|im_end|>"
    assert all(label == IGNORE_INDEX for t, label in zip(ex["input_ids"], ex["labels"]) if t == IMAGE_TOKEN_ID)


def test_interleaved_images_in_a_multi_turn_chat(tiny_tokenizer):
    rec = normalize_record({"messages": [
        {"role": "user", "content": [{"type": "image", "array": IMG}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": [{"type": "image", "array": IMG + 1}, {"type": "text", "text": "And this?"}]},
        {"role": "assistant", "content": "9"}]}, "r")
    ex = encode_image_record(rec, tiny_tokenizer, 3, max_length=200)
    assert ex["input_ids"].count(IMAGE_TOKEN_ID) == 6 and len(ex["images"]) == 2
    assert tiny_tokenizer.decode([t for t in ex["labels"] if t != IGNORE_INDEX]) == "7<|im_end|>9<|im_end|>"


def test_truncation_that_would_cut_image_tokens_is_refused(tiny_tokenizer):
    full = len(encode_image_record(record(), tiny_tokenizer, 30, max_length=500)["input_ids"])
    with pytest.raises(PolmError, match=f"r:1: the example is {full} tokens and max_length=20 would cut its "
                                        "image tokens .* Raise data.max_length to at least"):
        encode_image_record(record(), tiny_tokenizer, 30, max_length=20)
    cut = encode_image_record(record(prompt="What is 12 + 7? " * 3), tiny_tokenizer, 2, max_length=12)
    assert cut is None   # text-only truncation is allowed; here no answer token is left, so it is dropped
    kept, stats = encode_image_records([record(), record(prompt="What is 12 + 7? " * 3)], tiny_tokenizer, 2,
                                       max_length=12 + len(tiny_tokenizer("19<|im_end|>")["input_ids"]) + 40)
    assert stats["kept"] == 2


def test_collate_pads_and_orders_images(tiny_tokenizer):
    a = encode_image_record(record(image=IMG), tiny_tokenizer, 2, max_length=200)
    b = encode_image_record(record(prompt="hello", image=IMG + 5), tiny_tokenizer, 2, max_length=200)
    seen = []

    def image_input(images):
        seen.extend(int(img[0, 0]) for img in images)
        return {"image_features": torch.zeros(len(images), 2, 3)}

    batch = vlm_collate([a, b], tiny_tokenizer.pad_token_id, image_input)
    assert seen == [0, 5] and batch["image_features"].shape == (2, 2, 3)
    n_a, n_b = len(a["input_ids"]), len(b["input_ids"])
    assert batch["attention_mask"].sum(1).tolist() == [n_a, n_b]
    assert batch["input_ids"][1, :n_b].tolist() == b["input_ids"] and batch["labels"][1, n_b:].eq(IGNORE_INDEX).all()
    left = vlm_collate([a, b], tiny_tokenizer.pad_token_id, image_input, left_pad=True)
    width = max(n_a, n_b)
    assert left["input_ids"][1, width - n_b:].tolist() == b["input_ids"]
