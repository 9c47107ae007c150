"""Tiny checkpoints for the merge tests: saved Llamas (different seeds / sizes) and LoRA/DoRA adapters."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from conftest import build_tiny_llama
from safetensors.torch import load_file


def save_llama(path: Path, tokenizer, seed: int = 0, dtype: torch.dtype = torch.float32, **config) -> Path:
    """A random tiny Llama (optionally with changed config fields) + tokenizer, saved as an HF directory."""
    model = build_tiny_llama(len(tokenizer), seed=seed)
    if config:
        from transformers import LlamaForCausalLM

        for key, value in config.items():
            setattr(model.config, key, value)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(model.config)
    model.to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_adapter(path: Path, base_dir: Path, seed: int = 0, **lora) -> Path:
    """A LoRA/DoRA adapter on `base_dir` with random (non-zero) A and B, as if trained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False, **lora}
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **settings))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_magnitude_vector" in name:   # DoRA starts at ‖W‖; move it so the test sees it
                param.mul_(1 + 0.1 * torch.randn_like(param))
    model.save_pretrained(path)
    return path


def merged_with_peft(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Reference: PEFT's own merge_and_unload of the adapter into its base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    return {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(file))
    return out


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
