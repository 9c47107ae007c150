"""Load a causal LM and its tokenizer from an embedded name, a local directory or a hub id.

Any directory that holds a PEFT adapter (`adapter_config.json`) is loaded as base model + adapter, so
every output a polm recipe writes (`final/`) loads the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from polm.errors import PolmError, require

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"   # embedded name, local directory or hub id
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto: bf16 on CUDA if supported, else fp32
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    quantize: Literal["none", "nf4"] = "none"   # nf4: QLoRA 4-bit base (CUDA + bitsandbytes)
    attn_implementation: str | None = None      # e.g. sdpa, eager, flash_attention_2
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PolmError(f"model.device is '{device}' but no CUDA device is available",
                        fix="Use model.device=cpu (or auto).")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return DTYPES[dtype]


def resolve_path(ref: str) -> str:
    """Embedded names become a cached local checkpoint; directories and hub ids pass through."""
    from polm.assets import resolve_model

    return resolve_model(ref)


def adapter_base(path: str) -> str | None:
    """The base model named by a PEFT adapter directory, or None if `path` is not an adapter."""
    cfg = Path(path) / "adapter_config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text())["base_model_name_or_path"]


def load_tokenizer(ref: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_path(ref)
    base = adapter_base(path)
    source = path if (Path(path) / "tokenizer_config.json").is_file() or base is None else resolve_path(base)
    tok = _hub_guard(ref, lambda: AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, *, trainable: bool = False):
    """Load model (and adapter if `cfg.name` is an adapter dir) per `cfg`; returns the model on its device."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    path = resolve_path(cfg.name)
    base = adapter_base(path)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.quantize == "nf4":
        kwargs.update(_nf4_kwargs(device, dtype))
    base_path = resolve_path(base) if base else path
    model = _hub_guard(cfg.name, lambda: AutoModelForCausalLM.from_pretrained(base_path, **kwargs))
    if cfg.quantize == "none":
        model.to(device)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path, is_trainable=trainable)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def _nf4_kwargs(device: torch.device, dtype: torch.dtype) -> dict:
    if device.type != "cuda":
        raise PolmError("model.quantize=nf4 (QLoRA) needs a CUDA GPU; bitsandbytes 4-bit kernels do not run on CPU",
                        fix="Use model.quantize=none with LoRA on CPU, or run on a GPU machine.")
    require("bitsandbytes", "gpu", "QLoRA (model.quantize=nf4)")
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16)
    return {"quantization_config": quant, "device_map": {"": device.index or 0}}


def is_path_ref(ref: str) -> bool:
    """Whether a model reference spells a filesystem path (/x, ./x, ~/x, a/b/c) rather than a hub id (org/name)."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1


def _hub_guard(ref: str, load):
    """Run a from_pretrained call, turning 'no such model' into one sentence."""
    try:
        return load()
    except (OSError, ValueError) as err:
        if Path(ref).exists():
            raise PolmError(f"'{ref}' exists but is not a loadable model directory ({_first_line(err)})",
                            fix="Point to a directory with config.json and safetensors weights.") from None
        fix = "Use an embedded name (see `polm assets list`), a local model directory, or a reachable hub id."
        if is_path_ref(ref):
            raise PolmError(f"model '{ref}' is not a local directory (no such path) and not an embedded model",
                            fix=fix) from None
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        why = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else "it cannot be found on the hub"
        raise PolmError(f"model '{ref}' is not an embedded model, not a local directory, and {why}",
                        fix=fix) from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
