"""Loading: local dirs, adapter dirs (base + adapter), dtype choice, and one-sentence failures."""

import pytest
import torch

from polm.errors import PolmError
from polm.models import LoraConfig, ModelConfig, attach_adapter, load_model, load_tokenizer


def test_local_dir_with_dtype(tiny_model_dir):
    model = load_model(ModelConfig(name=str(tiny_model_dir), dtype="bf16", device="cpu"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert load_tokenizer(str(tiny_model_dir)).pad_token is not None


def test_adapter_dir_loads_base_plus_adapter(tiny_model_dir, tmp_path):
    base = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    peft_model = attach_adapter(base, LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 7, 9, 12]])
    reloaded = load_model(ModelConfig(name=str(tmp_path / "adapter"), device="cpu")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, peft_model.eval()(ids).logits)
    assert load_tokenizer(str(tmp_path / "adapter")).chat_template  # falls back to the base's tokenizer


def test_failures_are_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PolmError, match="not a local directory"):
        load_tokenizer("/no/such/dir")
    with pytest.raises(PolmError, match="hub is offline"):
        load_tokenizer("someorg/somemodel")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    with pytest.raises(PolmError, match="exists but is not a loadable model directory"):
        load_model(ModelConfig(name=str(tmp_path / "junk"), device="cpu"))


def test_cuda_device_without_a_gpu_is_a_clear_error(monkeypatch):
    from polm.models import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PolmError, match="no CUDA device is available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
