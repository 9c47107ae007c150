"""transformers-registered VLMs (`AutoModelForImageTextToText` + `AutoProcessor`: LLaVA, Idefics3 /
SmolVLM, Qwen2-VL, ...) through their own processors, as TRL does.

The processor renders the chat (its template places the images) and expands each image into the
model's image tokens; labels are the final assistant turn's tokens (prompt and image tokens -100). The
three components are found by the attribute names transformers uses: the vision tower, the projector
and the language model (+ lm_head), so `components.*` trainability and learning rates apply as for the
composed model, and LoRA goes on the language model's linear layers only. Tested on LLaVA.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polm.data.templating import IGNORE_INDEX
from polm.errors import PolmError
from polm.vlm.data import IMAGE_MARKER

COMPONENT_NAMES = {"vision": ("vision_tower", "vision_model", "visual"),
                   "projector": ("multi_modal_projector", "connector", "merger"),
                   "llm": ("language_model", "text_model")}


def is_hf_vlm_dir(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    return cfg.is_file() and "vision_config" in json.loads(cfg.read_text())


def load_hf_vlm(ref: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                trainable: bool = False):
    """(model, processor) from a directory or hub id; a PEFT adapter directory loads over its base."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from polm.models.load import _hub_guard, adapter_base

    base = adapter_base(ref) if Path(ref).is_dir() else None
    model = _hub_guard(ref, lambda: AutoModelForImageTextToText.from_pretrained(base or ref, dtype=dtype))
    processor = _hub_guard(ref, lambda: AutoProcessor.from_pretrained(ref))
    model.to(device)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, ref, is_trainable=trainable)
    return model, processor


def find_components(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """{"vision"|"projector"|"llm": [(qualified name, module)]}; the output layer counts as the LLM's."""
    found: dict[str, list[tuple[str, nn.Module]]] = {k: [] for k in COMPONENT_NAMES}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        for comp, names in COMPONENT_NAMES.items():
            if leaf in names and not any(name.startswith(n + ".") for n, _ in found[comp]):
                found[comp].append((name, module))
    head = model.get_output_embeddings()
    if head is not None:
        found["llm"].append(("lm_head", head))
    missing = [c for c in ("vision", "llm") if not found[c]]
    if missing:
        raise PolmError(f"cannot find the {' and '.join(missing)} component of {type(model).__name__}",
                        fix="polm knows the submodule names " + ", ".join(n for c in missing for n in COMPONENT_NAMES[c]))
    return found


def attach_llm_lora(model: nn.Module, lora, llm_prefixes: list[str]):
    """A PEFT LoRA adapter on the language model's linear layers named in lora.target_modules only
    (the vision tower's q/k/v projections share those names and stay untouched)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
               and any(name.startswith(p + ".") for p in llm_prefixes)
               and name.rsplit(".", 1)[-1] in lora.target_modules]
    if not targets:
        raise PolmError(f"lora.target_modules {lora.target_modules} names no linear layer of the language model",
                        fix="Use the LM's layer names, e.g. [q_proj, v_proj].")
    cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                         use_dora=lora.dora, use_rslora=lora.rslora, bias="none")
    return get_peft_model(model, cfg)


def _processor_messages(messages: list[dict]) -> list[dict]:
    """polm's string turns with image markers -> the processor's content parts."""
    out = []
    for m in messages:
        pieces = m["content"].split(IMAGE_MARKER)
        parts: list[dict[str, Any]] = []
        for k, piece in enumerate(pieces):
            if piece.strip("\n"):
                parts.append({"type": "text", "text": piece.strip("\n") if k else piece.rstrip("\n")})
            if k < len(pieces) - 1:
                parts.append({"type": "image"})
        out.append({"role": m["role"], "content": parts})
    return out


def image_token_id(model: nn.Module, processor) -> int:
    config = getattr(model, "config", None)
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return processor.tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", "<image>"))


def encode_hf_record(record: dict, processor, image_token: int, *, max_length: int,
                     generation_prompt: bool = False) -> dict | None:
    """{"input_ids", "labels", "extra": {pixel_values, ...}, "where"} of a normalized record with its images
    loaded; the final assistant turn is the target. None when truncation leaves no target."""
    where = record.get("where")
    messages = _processor_messages(record["messages"])
    has_answer = messages[-1]["role"] == "assistant" and not generation_prompt
    prompt_turns = messages[:-1] if has_answer else messages
    images = [im if im.ndim == 3 else im[:, :, None].repeat(3, axis=2) for im in record["images"]]
    prompt = processor.apply_chat_template(prompt_turns, add_generation_prompt=True, tokenize=False)
    text = processor.apply_chat_template(messages, tokenize=False) if has_answer else prompt
    enc = processor(text=[text], images=images or None, return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    labels = [IGNORE_INDEX] * len(ids)
    if has_answer:
        n_prompt = len(processor(text=[prompt], images=images or None, return_tensors="pt")["input_ids"][0])
        labels[n_prompt:] = ids[n_prompt:]
    if len(ids) > max_length:
        positions = [i for i, t in enumerate(ids) if t == image_token]
        if positions and positions[-1] >= max_length:
            raise PolmError(f"the example is {len(ids)} tokens and max_length={max_length} would cut its image tokens "
                            f"(they end at position {positions[-1] + 1})", where=where,
                            fix=f"Raise data.max_length to at least {len(ids)}.")
        ids, labels = ids[:max_length], labels[:max_length]
    if has_answer and all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")}
    return {"input_ids": ids, "labels": labels, "extra": extra, "where": where}


def hf_collate(examples: list[dict], pad_id: int, *, left_pad: bool = False) -> dict[str, torch.Tensor]:
    """Pad ids / mask / labels; the processor's image tensors concatenated along their first dim."""
    from polm.vlm.collate import vlm_collate

    batch = vlm_collate([{**ex, "images": []} for ex in examples], pad_id, lambda _: {}, left_pad=left_pad)
    for key in examples[0]["extra"]:
        batch[key] = torch.cat([ex["extra"][key] for ex in examples])
    return batch
