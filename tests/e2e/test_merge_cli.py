"""`polm merge` through the CLI on tiny Llamas: the output loads with transformers and generates; bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny_llama

from polm.cli import main


@pytest.fixture(scope="module")
def parents(tmp_path_factory, tiny_tokenizer) -> list[Path]:
    """Base (seed 0) and two 'fine-tunes' (seeds 1, 2) of one architecture, saved with the tokenizer."""
    root = tmp_path_factory.mktemp("parents")
    dirs = []
    for seed in range(3):
        build_tiny_llama(len(tiny_tokenizer), seed=seed).save_pretrained(root / f"m{seed}")
        tiny_tokenizer.save_pretrained(root / f"m{seed}")
        dirs.append(root / f"m{seed}")
    return dirs


def write_config(path: Path, data: dict) -> Path:
    path.write_text("# polm merge " + path.name + "\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def greedy(model, tokenizer, text: str = "What is 12 + 7?") -> list[int]:
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0].tolist()


def polm_merge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polm.cli", "merge", *args], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_soup_through_the_cli_loads_and_generates_like_the_averaged_model(tmp_path, parents, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = write_config(tmp_path / "soup.yaml", {"method": "linear", "models": [str(p) for p in parents[1:]],
                                                "output": str(tmp_path / "soup")})
    done = polm_merge(str(cfg))
    assert done.returncode == 0, done.stderr
    assert "merged linear of 2 model(s)" in done.stdout
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "soup").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "soup")
    reference = build_tiny_llama(len(tiny_tokenizer))
    a, b = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in parents[1:])
    reference.load_state_dict({k: (a[k] + b[k]) / 2 for k in a})
    enc = tokenizer("What is 12 + 7?", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(merged(**enc).logits, reference(**enc).logits, rtol=1e-5, atol=1e-6)
    tokens = greedy(merged, tokenizer)
    assert len(tokens) > enc["input_ids"].shape[1] and tokens == greedy(reference, tokenizer)


@pytest.mark.parametrize("method,parameters", [
    ("ties", {"density": 0.5, "weight": [{"filter": "mlp", "value": [0.3, 1.0]}, {"value": 0.7}]}),
    ("dare_ties", {"density": 0.6}),
    ("slerp", {"t": [0.0, 0.5, 1.0]}),
])
def test_methods_with_a_base_through_the_cli(tmp_path, parents, method, parameters):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models = [str(p) for p in parents[1:2 if method == "slerp" else 3]]
    cfg = write_config(tmp_path / "m.yaml", {"method": method, "base": str(parents[0]), "models": models,
                                             "parameters": parameters, "output": str(tmp_path / "out")})
    assert main(["merge", str(cfg), "--check"]) == 0 and not (tmp_path / "out").exists()
    assert main(["merge", str(cfg), "dtype=bf16"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.dtype == torch.bfloat16
    tokens = greedy(model, AutoTokenizer.from_pretrained(tmp_path / "out"))
    assert len(tokens) > 8
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert lineage["method"] == method and len(lineage["models"]) == len(models)


def test_lora_adapter_ingredient_through_the_cli(tmp_path, parents):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(parents[0]),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = write_config(tmp_path / "ta.yaml", {"method": "task_arithmetic", "base": str(parents[0]),
                                              "models": [str(tmp_path / "adapter")], "output": str(tmp_path / "out")})
    assert main(["merge", str(cfg)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(parents[0]), tmp_path / "adapter")
    for name, tensor in reference.merge_and_unload().state_dict().items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-5, atol=1e-6)


def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, parents, capsys):
    cfg = write_config(tmp_path / "bad.yaml", {"method": "ties", "base": str(parents[0]), "output": str(tmp_path / "o"),
                                               "models": [{"model": str(parents[1]), "parameters": {"density": 1.5}}]})
    done = polm_merge(str(cfg))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (f"polm merge: error: {cfg}:8 (models[0].parameters.density): density must be "
                                   "in (0, 1], got 1.5. density is the fraction of each task vector kept, e.g. 0.5.")
    assert main(["merge", str(cfg), "models=[no/such/dir]"]) == 2
    assert "models[0] 'no/such/dir': model 'no/such/dir' does not exist" in capsys.readouterr().err
    assert main(["merge", str(cfg), "method=linear", "models=[" + str(parents[1]) + "]", "tokenizer=/nowhere"]) == 2
    assert "tokenizer: model '/nowhere' does not exist" in capsys.readouterr().err
    assert main(["merge", str(cfg), "metod=linear"]) == 2
    assert "unknown config key 'metod'. Did you mean 'method'?" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
