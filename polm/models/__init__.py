"""Model loading (dtype, device, quantized base), PEFT adapters, the frozen model (reference, teacher,
judge), heads (polm.models.heads), saving and export."""

from polm.models.frozen import FrozenModel
from polm.models.load import ModelConfig, load_model, load_tokenizer, resolve_device, resolve_dtype
from polm.models.peft import LoraConfig, attach_adapter, merge_adapter
from polm.models.save import save_final

__all__ = [
    "FrozenModel",
    "LoraConfig",
    "ModelConfig",
    "attach_adapter",
    "load_model",
    "load_tokenizer",
    "merge_adapter",
    "resolve_device",
    "resolve_dtype",
    "save_final",
]
