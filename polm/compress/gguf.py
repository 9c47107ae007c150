"""GGUF export for llama.cpp and friends: `polm export --format gguf --quant q8_0|q4_0|q4_1|f16|bf16`.

Llama-architecture tensor names, llama.cpp's rotary Q/K row permutation, the byte-level BPE tokenizer,
the chat template and polm's recorded prompt format (`polm.prompt_format`, the JSON of polm_prompt.json)
in the metadata; quantized with the `gguf` package's numpy quantizers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from polm.data.templating import TrainedPromptFormat
from polm.errors import PolmError, require
from polm.io import atomic_file

PROMPT_FORMAT_KEY = "polm.prompt_format"   # the JSON text of the source's polm_prompt.json
QUANTS = ("q8_0", "q4_0", "q4_1", "f16", "bf16")
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5   # llama.cpp token types


def gguf_name(hf_name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'blk.3.attn_q.weight', 'model.norm.weight' -> 'output_norm.weight'."""
    match = _LAYER.match(hf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"blk.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.{match.group(3)}"
    stem, _, kind = hf_name.rpartition(".")
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{kind}"
    raise PolmError(f"tensor '{hf_name}' has no GGUF llama name", fix="Only plain Llama-architecture models export to GGUF.")


def permute_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's Q/K row order: within each head, rows [first half | second half] (HF's rotate_half
    pairing) become interleaved pairs (GGML's rope). w [heads·d, ...] -> reshape [heads, 2, d/2, ...],
    swap axes 1 and 2. transformers undoes it on load with the inverse reshape [heads, d/2, 2, ...]."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def export_gguf(model_ref: str, out: Path, quant: str = "f16", overwrite: bool = False) -> Path:
    """Write `model_ref` (a model, or an adapter merged into its base first) as one GGUF file `out`, with
    the prompt format recorded in its directory (polm_prompt.json), if any."""
    from polm.models import ModelConfig, load_model, load_tokenizer
    from polm.models.load import resolve_path
    from polm.models.peft import merge_adapter

    if quant not in QUANTS:
        raise PolmError(f"unknown GGUF quantization '{quant}'", where="--quant", fix=f"Use one of {', '.join(QUANTS)}.")
    if out.exists() and not overwrite:
        raise PolmError(f"'{out}' already exists", fix="Pass --overwrite or another --out.")
    path = Path(resolve_path(model_ref))
    prompt_format = TrainedPromptFormat.read(path) if path.is_dir() else None
    model = merge_adapter(load_model(ModelConfig(name=model_ref, device="cpu", dtype="fp32")))
    return write_gguf(model, load_tokenizer(model_ref), out, quant, name=Path(model_ref).name,
                      prompt_format=prompt_format)


def write_gguf(model, tokenizer, out: Path, quant: str = "f16", name: str = "polm-model",
               prompt_format: TrainedPromptFormat | None = None) -> Path:
    """`model` (a transformers Llama) + `tokenizer` (+ the `prompt_format` it was trained with) as a GGUF
    file at `out`, written atomically."""
    gguf = require("gguf", "compress", "GGUF export")
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise PolmError(f"GGUF export supports Llama-architecture models, not '{config.model_type}'",
                        fix="Export a LlamaForCausalLM (e.g. SmolLM2), or use the Hugging Face format.")
    rope = getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default":
        raise PolmError(f"rope scaling '{rope['rope_type']}' is not written to GGUF by polm",
                        fix="Export a model with default rotary embeddings.")
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        _write_config(writer, gguf, config, rope, quant, name)
        _write_tokenizer(writer, tokenizer, config.vocab_size)
        if prompt_format is not None:
            _write_prompt_format(writer, tokenizer, prompt_format)
        _write_tensors(writer, gguf, model, quant)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


def _write_config(writer, gguf, config, rope: dict, quant: str, name: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type({"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                          "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16}[quant])


def _write_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer as llama.cpp's 'gpt2' model: tokens in id order, types, merges, ids."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise PolmError("GGUF export supports byte-level BPE tokenizers (GPT-2 style) only",
                        fix="Use a model with a GPT-2/SmolLM-style tokenizer.")
    vocab = tokenizer.get_vocab()
    tokens = [f"[PAD{i}]" for i in range(max(vocab_size, len(vocab)))]
    types = [UNUSED] * len(tokens)
    for token, index in vocab.items():
        tokens[index], types[index] = token, NORMAL
    for index, added in tokenizer.added_tokens_decoder.items():
        types[index] = CONTROL if added.special else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    digits = "Digits" in json.dumps(spec.get("pre_tokenizer"))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if digits else "gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id), ("unk_token_id", writer.add_unk_token_id)):
        if getattr(tokenizer, key, None) is not None:
            add(getattr(tokenizer, key))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def _write_prompt_format(writer, tokenizer, prompt_format: TrainedPromptFormat) -> None:
    """`polm.prompt_format` (chat, suffix, system, stop, end_of_turn as JSON) and, when the end-of-turn token
    is one token of the vocabulary, llama.cpp's end-of-turn id, so its generation stops there too."""
    writer.add_string(PROMPT_FORMAT_KEY, prompt_format.to_json())
    token = prompt_format.end_of_turn
    if token is not None and token in tokenizer.get_vocab():
        writer.add_eot_token_id(tokenizer.convert_tokens_to_ids(token))


def read_prompt_format(path: Path) -> dict | None:
    """The prompt format stored in the GGUF file `path` (the dict of polm_prompt.json), or None."""
    gguf = require("gguf", "compress", "reading GGUF metadata")
    field = gguf.GGUFReader(str(path)).get_field(PROMPT_FORMAT_KEY)
    return None if field is None else json.loads(field.contents())


def _write_tensors(writer, gguf, model, quant: str) -> None:
    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name.startswith("lm_head."):
            continue   # llama.cpp reads a missing output.weight as tied to token_embd
        name, data = gguf_name(hf_name), tensor.detach().float()
        if ".attn_q." in name:
            data = permute_rotary(data, config.num_attention_heads)
        elif ".attn_k." in name:
            data = permute_rotary(data, config.num_key_value_heads)
        _add_tensor(writer, gguf, name, data.numpy(), quant)


def _add_tensor(writer, gguf, name: str, data: np.ndarray, quant: str) -> None:
    """1-D tensors (norms, biases) stay F32; a matrix whose rows do not fill whole blocks falls back to F16."""
    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
        return
    qtype = getattr(gguf.GGMLQuantizationType, quant.upper())
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if quant == "f16" or data.shape[-1] % block:
        writer.add_tensor(name, data.astype(np.float16))
        return
    writer.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
