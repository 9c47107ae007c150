"""GGUF export: transformers loads the file back and generates the source's greedy tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polm.compress import gguf as gguf_export
from polm.compress.gguf import export_gguf, gguf_name, permute_rotary
from polm.compress.quantize import dequantize, quantize_rtn
from polm.errors import PolmError

PROMPT = "What is 12 + 7?"


def greedy(model, tokenizer) -> list[int]:
    enc = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=0)[0].tolist()


def load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def source(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_names_and_the_rotary_permutation_by_hand():
    assert gguf_name("model.layers.3.self_attn.q_proj.weight") == "blk.3.attn_q.weight"
    assert gguf_name("model.layers.0.post_attention_layernorm.weight") == "blk.0.ffn_norm.weight"
    assert gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    assert gguf_name("lm_head.weight") == "output.weight"
    # one head of 4 rows: halves [0 1 | 2 3] become the interleaved pairs (0 2)(1 3)
    assert permute_rotary(torch.arange(4.0), 1).tolist() == [0.0, 2.0, 1.0, 3.0]
    rows = torch.arange(16.0).reshape(8, 2)
    back = permute_rotary(rows, 2).reshape(2, 2, 2, 2).transpose(1, 2).reshape(8, 2)   # transformers' inverse
    assert torch.equal(back, rows)


def test_f16_loads_back_with_the_same_weights_tokens_and_tokenizer(tmp_path, tiny_model_dir, source):
    model, tokenizer = source
    out = export_gguf(str(tiny_model_dir), tmp_path / "tiny.gguf", "f16")
    loaded, loaded_tok = load(out)
    assert greedy(loaded, loaded_tok) == greedy(model, tokenizer)
    for name, tensor in model.state_dict().items():   # Q/K included: the loader undoes our permutation
        torch.testing.assert_close(loaded.state_dict()[name], tensor, atol=1e-3, rtol=1e-3)
    assert loaded_tok(PROMPT)["input_ids"] == tokenizer(PROMPT)["input_ids"]
    assert loaded_tok.chat_template == tokenizer.chat_template
    assert (loaded_tok.bos_token, loaded_tok.eos_token, loaded_tok.pad_token) == ("<|im_start|>", "<|im_end|>",
                                                                                  "<|endoftext|>")
    assert loaded.config.tie_word_embeddings and loaded.config.num_key_value_heads == 2


def test_q8_0_is_int8_blocks_of_32_and_keeps_the_greedy_tokens(tmp_path, tiny_model_dir, source):
    model, tokenizer = source
    loaded, loaded_tok = load(export_gguf(str(tiny_model_dir), tmp_path / "tiny-q8.gguf", "q8_0"))
    # Q8_0 is symmetric int8 over blocks of 32 with d = amax/127, which is polm's RTN(8 bits, group 32)
    # except that d is stored as fp16: weights differ by at most 127·|d - fp16(d)| <= amax·2^-11.
    w = model.model.layers[0].mlp.down_proj.weight
    rtn = dequantize(quantize_rtn(w, 8, 32))
    amax = w.detach().abs().reshape(w.shape[0], -1, 32).amax(-1).repeat_interleave(32, dim=1)
    assert ((loaded.model.layers[0].mlp.down_proj.weight - rtn).abs() <= amax * 2 ** -11 + 1e-7).all()
    # Each weight moves by <= amax/254 (0.4% of its block's largest); on this 2-layer model that moves
    # the logits (|logit| < 1) by ~4e-3, so 2e-2 leaves 5x headroom and is still far below their spread.
    enc = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        drift = (loaded(**enc).logits - model(**enc).logits).abs().max().item()
    assert drift < 2e-2
    assert greedy(loaded, loaded_tok) == greedy(model, tokenizer)


def test_an_adapter_is_merged_before_export(tmp_path, tiny_model_dir, source):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tokenizer = source[1]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()   # get_peft_model edits it in place
    torch.manual_seed(3)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().eval()
    loaded, loaded_tok = load(export_gguf(str(tmp_path / "adapter"), tmp_path / "merged.gguf", "f16"))
    q = "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(loaded.state_dict()[q], merged.state_dict()[q], atol=1e-3, rtol=1e-3)
    assert greedy(loaded, loaded_tok) == greedy(merged, tokenizer)


def test_bad_input_and_nothing_half_written(tmp_path, tiny_model_dir, monkeypatch):
    with pytest.raises(PolmError, match="unknown GGUF quantization 'q5_k'"):
        export_gguf(str(tiny_model_dir), tmp_path / "x.gguf", "q5_k")
    (tmp_path / "taken.gguf").write_text("old")
    with pytest.raises(PolmError, match="already exists"):
        export_gguf(str(tiny_model_dir), tmp_path / "taken.gguf")

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_export, "_write_tensors", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(str(tiny_model_dir), tmp_path / "y.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.gguf"]


def _with_prompt_format(tiny_model_dir: Path, tmp_path: Path, text: str) -> Path:
    import shutil

    from polm.data.templating import PROMPT_FORMAT_FILE

    model_dir = tmp_path / "final"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / PROMPT_FORMAT_FILE).write_text(text)
    return model_dir


def test_the_recorded_prompt_format_round_trips_through_the_metadata(tmp_path, tiny_model_dir, source):
    import gguf

    from polm.compress.gguf import PROMPT_FORMAT_KEY, read_prompt_format
    from polm.data.templating import TrainedPromptFormat

    fmt = TrainedPromptFormat(chat=True, suffix="Give only the number.", system="Be brief.", stop=("<|im_end|>",),
                              end_of_turn="<|im_end|>")
    out = export_gguf(str(_with_prompt_format(tiny_model_dir, tmp_path, fmt.to_json())), tmp_path / "p.gguf", "q8_0")
    assert read_prompt_format(out) == {"chat": True, "suffix": "Give only the number.", "system": "Be brief.",
                                       "stop": ["<|im_end|>"], "end_of_turn": "<|im_end|>"}
    reader = gguf.GGUFReader(str(out))
    assert reader.get_field(PROMPT_FORMAT_KEY).contents() == fmt.to_json()
    eot = source[1].convert_tokens_to_ids("<|im_end|>")
    assert reader.get_field("tokenizer.ggml.eot_token_id").contents() == eot
    loaded, _ = load(out)   # the extra keys do not disturb transformers' loader
    assert loaded.config.num_hidden_layers == 2


def test_a_model_without_a_recorded_format_writes_no_key(tmp_path, tiny_model_dir):
    import gguf

    from polm.compress.gguf import read_prompt_format

    out = export_gguf(str(tiny_model_dir), tmp_path / "plain.gguf", "f16")
    assert read_prompt_format(out) is None
    assert gguf.GGUFReader(str(out)).get_field("tokenizer.ggml.eot_token_id") is None


def test_an_unreadable_recorded_format_is_one_error_and_writes_nothing(tmp_path, tiny_model_dir):
    model_dir = _with_prompt_format(tiny_model_dir, tmp_path, "{not json")
    with pytest.raises(PolmError, match="the recorded prompt format is unreadable"):
        export_gguf(str(model_dir), tmp_path / "bad.gguf", "f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
