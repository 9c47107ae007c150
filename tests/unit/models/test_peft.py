"""LoRA / DoRA attach and merge: the merged model computes what the adapter model computes."""

import pytest
import torch

from polm.errors import PolmError
from polm.models import LoraConfig, attach_adapter, merge_adapter


def randomize_adapter(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter do something
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("dora", [False, True])
def test_merged_model_equals_adapter_model(tiny_llama, dora):
    ids = torch.tensor([[1, 5, 9, 30, 2, 44]])
    model = attach_adapter(tiny_llama, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], dora=dora))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # base frozen
    assert any("magnitude" in n for n in trainable) is dora
    randomize_adapter(model)
    model.eval()
    with torch.no_grad():
        expected = model(ids).logits
        merged = merge_adapter(model)
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_unknown_target_module_lists_the_real_ones(tiny_llama):
    with pytest.raises(PolmError, match=r"does not have: \['qkv'\]. .*'q_proj'"):
        attach_adapter(tiny_llama, LoraConfig(target_modules=["q_proj", "qkv"]))


def test_lora_config_validation():
    with pytest.raises(PolmError, match="lora.r must be at least 1"):
        LoraConfig(r=0).validate()
    with pytest.raises(PolmError, match="lora.dropout"):
        LoraConfig(dropout=1.5).validate()
