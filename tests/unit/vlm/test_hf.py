"""transformers VLMs through their processor, on a tiny random-init LLaVA built from a config."""

from __future__ import annotations

import numpy as np
import pytest
from vlm_helpers import build_tiny_llava

from polm.data.templating import IGNORE_INDEX
from polm.errors import PolmError
from polm.models import LoraConfig
from polm.vlm.data import normalize_record
from polm.vlm.hf import (
    attach_llm_lora,
    encode_hf_record,
    find_components,
    hf_collate,
    image_token_id,
    load_hf_vlm,
)


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return load_hf_vlm(str(build_tiny_llava(tmp_path_factory.mktemp("llava"))))


def record(answer="hello"):
    rec = normalize_record({"image": np.zeros((20, 20), np.uint8), "prompt": "What is this?", "completion": answer}, "r:1")
    return {**rec, "images": [np.zeros((20, 20), np.uint8)], "where": "r:1"}


def test_components_by_transformers_names(llava):
    model, _ = llava
    parts = find_components(model)
    assert [n for n, _ in parts["vision"]] == ["model.vision_tower"]
    assert [n for n, _ in parts["projector"]] == ["model.multi_modal_projector"]
    assert [n for n, _ in parts["llm"]] == ["model.language_model", "lm_head"]


def test_processor_expands_the_image_and_labels_only_the_answer(llava):
    model, processor = llava
    token = image_token_id(model, processor)
    ex = encode_hf_record(record(), processor, token, max_length=200)
    assert ex["input_ids"].count(token) == 16 and ex["extra"]["pixel_values"].shape == (1, 3, 16, 16)
    targets = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert processor.tokenizer.decode(targets) == "hello<|im_end|>\n"
    assert all(label == IGNORE_INDEX for t, label in zip(ex["input_ids"], ex["labels"]) if t == token)
    batch = hf_collate([ex, encode_hf_record(record("good morning"), processor, token, max_length=200)], 0)
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["input_ids"].shape[0] == 2
    with pytest.raises(PolmError, match="max_length=10 would cut its image tokens"):
        encode_hf_record(record(), processor, token, max_length=10)


def test_lora_goes_on_the_language_model_only(llava):
    model, _ = llava
    peft_model = attach_llm_lora(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]), ["model.language_model"])
    lora = [n for n, p in peft_model.named_parameters() if "lora_" in n]
    assert lora and all("language_model" in n for n in lora)
    assert all(not p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)
    peft_model.unload()
