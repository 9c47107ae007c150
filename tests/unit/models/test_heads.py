"""Heads: the value head (zero start, save/load round trip) and the score model's LoRA through attach_adapter."""

import torch

from polm.models import LoraConfig, ModelConfig
from polm.models.heads import (
    ValueHead,
    attach_score_adapter,
    load_score_model,
    load_value_head,
    save_value_head,
    sequence_scores,
)


def test_value_head_starts_at_zero_and_round_trips(tmp_path):
    head = ValueHead(8)
    hidden = torch.randn(2, 3, 8)
    assert torch.equal(head(hidden), torch.zeros(2, 3))
    with torch.no_grad():
        head.linear.weight.copy_(torch.arange(8.0)[None])
        head.linear.bias.fill_(0.5)
    save_value_head(head, tmp_path)
    loaded = load_value_head(tmp_path)
    # V = w · h + b with w = (0, 1, ..., 7), b = 0.5: for h = 1 everywhere, 28.5
    assert loaded(torch.ones(1, 1, 8)).item() == 28.5
    torch.testing.assert_close(loaded(hidden), head(hidden))


def test_score_adapter_trains_lora_and_the_score_head(tiny_model_dir):
    model = load_score_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="fp32"), pad_token_id=0)
    ids = torch.tensor([[5, 9, 30, 2, 0], [3, 8, 8, 1, 60]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    before = sequence_scores(model.eval(), {"input_ids": ids, "attention_mask": mask})
    model = attach_score_adapter(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("score" in n and "lora" not in n for n in trainable)
    assert all("lora_" in n or "score" in n for n in trainable)
    with torch.no_grad():   # B = 0 and the score head copied: the adapter model scores as the base did
        torch.testing.assert_close(sequence_scores(model.eval(), {"input_ids": ids, "attention_mask": mask}), before)
        plain = model(input_ids=ids[1:], attention_mask=mask[1:]).logits[0, 0]
    torch.testing.assert_close(before[1], plain.float())
