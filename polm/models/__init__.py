"""Model loading (dtype, device, quantized base), PEFT adapters, saving and export."""

from polm.models.load import ModelConfig, load_model, load_tokenizer, resolve_device, resolve_dtype
from polm.models.peft import LoraConfig, attach_adapter, merge_adapter

__all__ = [
    "LoraConfig",
    "ModelConfig",
    "attach_adapter",
    "load_model",
    "load_tokenizer",
    "merge_adapter",
    "resolve_device",
    "resolve_dtype",
]
