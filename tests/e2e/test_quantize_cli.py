"""`polm quantize` and `polm export --format gguf` on the tiny Llama: outputs load with transformers; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from polm.cli import main
from polm.compress.quantize import dequantize, quantize_rtn, unpack_int4


def write_config(path: Path, data: dict) -> Path:
    path.write_text("# polm quantize " + path.name + "\n" + yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    from conftest import CORPUS

    path = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in CORPUS * 3) + "\n")
    return path


def test_int4_rtn_directory_loads_and_its_codes_rebuild_the_weights(tmp_path, tiny_model_dir, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "int4"
    cfg = write_config(tmp_path / "q.yaml", {"model": str(tiny_model_dir), "output": str(out), "method": "rtn",
                                             "bits": 4, "group_size": 16, "symmetric": False})
    assert main(["quantize", str(cfg)]) == 0
    assert "quantized 14 layers" in capsys.readouterr().out
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    name = "model.layers.1.mlp.down_proj"
    want = dequantize(quantize_rtn(source.get_submodule(name).weight, 4, 16, symmetric=False))
    assert torch.equal(loaded.get_submodule(name).weight, want)
    assert torch.equal(loaded.lm_head.weight, source.lm_head.weight)   # excluded (tied to the embeddings)
    packed = load_file(out / "quantized.safetensors")
    codes = quantize_rtn(source.get_submodule(name).weight, 4, 16, symmetric=False)
    assert torch.equal(unpack_int4(packed[f"{name}.qweight"]), codes.q)
    assert torch.equal(packed[f"{name}.scales"], codes.scale)
    manifest = json.loads((out / "quantization.json").read_text())
    assert (manifest["method"], manifest["bits"], manifest["group_size"]) == ("rtn", 4, 16)
    assert "rtn int4 asymmetric group size 16" in (out / "README.md").read_text()


def test_gptq_through_the_cli(tmp_path, tiny_model_dir, calib):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "gptq"
    cfg = write_config(tmp_path / "g.yaml", {
        "model": str(tiny_model_dir), "output": str(out), "method": "gptq", "bits": 8, "group_size": -1,
        "targets": ["q_proj", "v_proj"], "calibration": {"data": str(calib), "n_samples": 4, "seq_len": 16, "batch_size": 2}})
    assert main(["quantize", str(cfg)]) == 0
    packed = load_file(out / "quantized.safetensors")
    assert sorted({k.rsplit(".", 1)[0] for k in packed}) == [f"model.layers.{i}.self_attn.{p}"
                                                          for i in (0, 1) for p in ("q_proj", "v_proj")]
    loaded = AutoModelForCausalLM.from_pretrained(out)
    q = packed["model.layers.0.self_attn.q_proj.qweight"].float()
    torch.testing.assert_close(loaded.model.layers[0].self_attn.q_proj.weight,
                               q * packed["model.layers.0.self_attn.q_proj.scales"])


def test_torchao_int8_through_the_cli(tmp_path, tiny_model_dir):
    pytest.importorskip("torchao")
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ao"
    assert main(["quantize", f"model={tiny_model_dir}", f"output={out}", "method=torchao", "bits=8",
                 "group_size=-1"]) == 0
    loaded, source = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    w, w0 = loaded.model.layers[0].mlp.up_proj.weight, source.model.layers[0].mlp.up_proj.weight
    step = w0.abs().amax(dim=1, keepdim=True) / 127
    assert ((w - w0).abs() <= step).all() and not torch.equal(w, w0)


@pytest.mark.parametrize("overrides,message", [
    (["targets=[embed_tokens]"], "targets: 'embed_tokens' names a Embedding"),
    (["bits=3"], "bits: bits must be 4 or 8, got 3"),
    (["group_size=24"], "group_size: group size 24 does not divide in_features 32 (layer 'model.layers.0.self_attn.q_proj')"),
    (["method=torchao", "bits=8"], "group_size: torchao's int8 weight-only config is per-channel"),
])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, tiny_model_dir, capsys, overrides, message):
    out = tmp_path / "runs" / "q"
    assert main(["quantize", f"model={tiny_model_dir}", f"output={out}", *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_missing_torchao_is_a_clear_error(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchao", None)   # import torchao now raises ImportError
    assert main(["quantize", f"model={tiny_model_dir}", f"output={tmp_path / 'q'}", "method=torchao"]) == 2
    assert "needs the optional package 'torchao'" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_a_failure_while_writing_leaves_nothing(tmp_path, tiny_model_dir, monkeypatch):
    import polm.compress.cli as cli

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(cli, "_packed", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["quantize", f"model={tiny_model_dir}", f"output={tmp_path / 'q'}", "group_size=16"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bits,group_size", [(4, 16), (8, -1)])
def test_compressed_tensors_output_loads_as_the_same_model(tmp_path, tiny_model_dir, bits, group_size):
    """transformers loads the pack-quantized directory through compressed-tensors and computes what polm's
    dequantized directory computes: logits within 1e-4, the same greedy tokens."""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    common = [f"model={tiny_model_dir}", "method=rtn", f"bits={bits}", f"group_size={group_size}"]
    assert main(["quantize", *common, f"output={tmp_path / 'polm'}"]) == 0
    assert main(["quantize", *common, f"output={tmp_path / 'ct'}", "format=compressed-tensors"]) == 0
    ct_dir = tmp_path / "ct"
    config = json.loads((ct_dir / "config.json").read_text())["quantization_config"]
    assert (config["quant_method"], config["format"]) == ("compressed-tensors", "pack-quantized")
    assert config["ignore"] == ["lm_head"]
    stored = load_file(ct_dir / "model.safetensors")
    assert stored["model.layers.0.mlp.up_proj.weight_packed"].dtype == torch.int32
    assert "model.layers.0.mlp.up_proj.weight" not in stored and not (ct_dir / "quantized.safetensors").exists()
    card = (ct_dir / "README.md").read_text()
    assert f"compressed-tensors `pack-quantized`, int{bits} symmetric" in card and f"W{bits}A16" in card
    ours, theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "polm").eval(), AutoModelForCausalLM.from_pretrained(ct_dir).eval()
    ids = torch.tensor([[1, 5, 9, 3, 7, 2], [4, 4, 8, 6, 1, 3]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, atol=1e-4, rtol=0)
        greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(theirs.generate(ids, **greedy), ours.generate(ids, **greedy))


@pytest.mark.parametrize("overrides,message", [
    (["symmetric=false"], "symmetric: asymmetric compressed-tensors checkpoints do not load with transformers"),
    (["method=torchao", "bits=8", "group_size=-1"], "format: method: torchao keeps no codes to pack"),
    (["method=gptq", "gptq.act_order=true"], "gptq.act_order: act-order GPTQ permutes the groups"),
])
def test_compressed_tensors_bad_input_is_one_error_and_writes_nothing(tmp_path, tiny_model_dir, capsys, overrides,
                                                                       message):
    out = tmp_path / "runs" / "q"
    assert main(["quantize", f"model={tiny_model_dir}", f"output={out}", "group_size=16", "format=compressed-tensors",
                 *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_missing_compressed_tensors_is_a_clear_error(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "compressed_tensors", None)
    assert main(["quantize", f"model={tiny_model_dir}", f"output={tmp_path / 'q'}", "group_size=16",
                 "format=compressed-tensors"]) == 2
    assert "needs the optional package 'compressed_tensors'" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_export_gguf_through_the_cli(tmp_path, tiny_model_dir, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tiny-q8.gguf"
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(out), "--format", "gguf", "--quant", "q8_0"]) == 0
    assert "wrote q8_0 GGUF" in capsys.readouterr().out
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name)
    assert loaded.config.num_hidden_layers == 2
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(out), "--format", "gguf"]) == 2


def test_export_gguf_carries_the_recorded_prompt_format(tmp_path, tiny_model_dir, capsys):
    import shutil

    from polm.compress.gguf import read_prompt_format
    from polm.data.templating import PROMPT_FORMAT_FILE, TrainedPromptFormat

    final = tmp_path / "run" / "final"
    shutil.copytree(tiny_model_dir, final)
    fmt = TrainedPromptFormat(chat=True, suffix="Answer with a number.", stop=("<|im_end|>",), end_of_turn="<|im_end|>")
    (final / PROMPT_FORMAT_FILE).write_text(fmt.to_json())
    out = tmp_path / "model.gguf"
    assert main(["export", "--model", str(final), "--out", str(out), "--format", "gguf", "--quant", "f16"]) == 0
    assert read_prompt_format(out) == {"chat": True, "suffix": "Answer with a number.", "system": None,
                                       "stop": ["<|im_end|>"], "end_of_turn": "<|im_end|>"}
