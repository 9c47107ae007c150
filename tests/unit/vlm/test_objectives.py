"""ITG / ITC / ITM on a composed VLM's batch: each term against its definition, hard negatives, gradients."""

from __future__ import annotations

import pytest
import torch
from vlm_helpers import synthetic_images

from polm.losses.vlm import itc_loss
from polm.ops.logprobs import IGNORE_INDEX, causal_lm_loss
from polm.vlm.collate import encode_image_record, vlm_collate
from polm.vlm.data import classification_record
from polm.vlm.features import image_inputs
from polm.vlm.model import lm_width
from polm.vlm.objectives import PretrainHeads, _swap_answers, pretraining_losses


def batch_of(vlm, tokenizer, answers):
    recs = [classification_record(img, a, "What is this?", f"r:{i}")
            for i, (img, a) in enumerate(zip(synthetic_images(len(answers), size=16), answers))]
    examples = [encode_image_record(r, tokenizer, vlm.spec.tokens_per_image, max_length=200) for r in recs]
    return vlm_collate(examples, tokenizer.pad_token_id, image_inputs(vlm.tower, None))


ANSWERS = ["hello", "good morning", "world"]


def test_itg_term_is_the_sft_loss_mean(vlm, tiny_tokenizer):
    batch = batch_of(vlm, tiny_tokenizer, ANSWERS)
    heads = PretrainHeads(lm_width(vlm.lm))
    total, parts = pretraining_losses(vlm, heads, batch, {"itg": 1.0}, pad_id=tiny_tokenizer.pad_token_id)
    loss_sum, count = causal_lm_loss(vlm.lm, {**vlm.lm_inputs(batch), "labels": batch["labels"]})
    assert set(parts) == {"itg"} and total.item() == pytest.approx(loss_sum.item() / count, rel=1e-5)


def test_itc_term_pools_image_tokens_and_answer_states(vlm, tiny_tokenizer):
    batch = batch_of(vlm, tiny_tokenizer, ANSWERS)
    heads = PretrainHeads(lm_width(vlm.lm))
    total, parts = pretraining_losses(vlm, heads, batch, {"itc": 1.0}, pad_id=tiny_tokenizer.pad_token_id)
    image_emb = vlm.image_tokens(pixel_values=batch["pixel_values"]).mean(1)
    text = []
    for a in ANSWERS:   # each answer alone: its tokens + end-of-turn, as the labels mark them
        ids = torch.tensor([tiny_tokenizer(a + "<|im_end|>", add_special_tokens=False)["input_ids"]])
        text.append(vlm.lm(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(0))
    expected = itc_loss(image_emb, torch.stack(text), heads.logit_scale)
    assert total.item() == pytest.approx(expected.item(), rel=1e-4) and parts["itc"] == pytest.approx(total.item())


def test_swapped_answers_keep_the_prompt(vlm, tiny_tokenizer):
    batch = batch_of(vlm, tiny_tokenizer, ANSWERS)
    swapped = _swap_answers(batch, torch.tensor([2, 0, 1]), tiny_tokenizer.pad_token_id)
    answers = [tiny_tokenizer.decode(row[lab != IGNORE_INDEX]) for row, lab in zip(swapped["input_ids"], swapped["labels"])]
    assert answers == ["world<|im_end|>", "hello<|im_end|>", "good morning<|im_end|>"]
    n_prompt = int((batch["labels"][0] != IGNORE_INDEX).nonzero()[0])
    assert swapped["input_ids"][0, :n_prompt].tolist() == batch["input_ids"][0, :n_prompt].tolist()


def test_itm_trains_the_head_and_needs_a_different_answer(vlm, tiny_tokenizer):
    heads = PretrainHeads(lm_width(vlm.lm))
    batch = batch_of(vlm, tiny_tokenizer, ANSWERS)
    torch.manual_seed(0)
    total, parts = pretraining_losses(vlm, heads, batch, {"itm": 1.0, "itg": 0.5}, pad_id=tiny_tokenizer.pad_token_id)
    assert total.item() == pytest.approx(parts["itm"] + 0.5 * parts["itg"], rel=1e-5)
    total.backward()
    assert heads.itm_head.weight.grad.abs().sum() > 0 and vlm.projector.fc1.weight.grad.abs().sum() > 0
    assert heads.logit_scale.grad is None or heads.logit_scale.grad == 0   # itc weight 0: no temperature update
    same = batch_of(vlm, tiny_tokenizer, ["hello"] * 3)
    _, parts = pretraining_losses(vlm, heads, same, {"itm": 1.0}, pad_id=tiny_tokenizer.pad_token_id)
    assert parts["itm"] == 0.0
