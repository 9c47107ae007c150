"""The streaming runner end to end on tiny Llamas: values by hand, adapters, sharding, lineage, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from merge_models import load_weights, merged_with_peft, save_adapter, save_llama

from polm.errors import PolmError
from polm.io import file_sha256
from polm.merge.config import MergeConfig, load_merge_config
from polm.merge.plan import tensor_parameters
from polm.merge.runner import build_plan, merge_one, run_merge


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("models")
    return [save_llama(root / f"m{seed}", tiny_tokenizer, seed=seed) for seed in range(3)]


def _cfg(out, **kw) -> MergeConfig:
    cfg = MergeConfig(output=str(out), **kw)
    cfg.validate()
    return cfg


def test_linear_soup_is_the_weighted_average_and_loads(tmp_path, models):
    from transformers import AutoModelForCausalLM

    out = run_merge(_cfg(tmp_path / "soup", method="linear",
                         models=[{"model": str(models[0]), "parameters": {"weight": 1}},
                                 {"model": str(models[1]), "parameters": {"weight": 3}}]))
    a, b, merged = load_weights(models[0]), load_weights(models[1]), load_weights(out)
    assert set(merged) == set(a)
    for name in a:
        torch.testing.assert_close(merged[name], (a[name] + 3 * b[name]) / 4, rtol=0, atol=1e-7)
    model = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model.model.layers[1].mlp.up_proj.weight.detach(),
                               merged["model.layers.1.mlp.up_proj.weight"])
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (models[0] / name).read_bytes()


def test_filters_and_layer_gradients_reach_each_tensor(tmp_path, models):
    """weight of m1: 0 on attention; elsewhere a gradient 0 -> 1 over the two layers (x = 0 at layer 0)."""
    weight = [{"filter": "self_attn", "value": 0.0}, {"value": [0.0, 1.0]}]
    out = run_merge(_cfg(tmp_path / "grad", method="linear",
                         models=[str(models[0]), {"model": str(models[1]), "parameters": {"weight": weight}}]))
    a, b, merged = load_weights(models[0]), load_weights(models[1]), load_weights(out)
    assert torch.equal(merged["model.layers.1.self_attn.q_proj.weight"], a["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], a["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(merged["model.embed_tokens.weight"], a["model.embed_tokens.weight"])   # outside: x = 0
    name = "model.layers.1.mlp.up_proj.weight"                                                 # x = 1: weight 1
    torch.testing.assert_close(merged[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-7)


def test_ties_of_full_models_matches_the_pure_function(tmp_path, models):
    from polm.merge.methods import ties

    cfg = _cfg(tmp_path / "ties", method="ties", base=str(models[0]),
               models=[{"model": str(models[1]), "parameters": {"density": 0.4}}, str(models[2])],
               parameters={"weight": 0.7})
    plan = build_plan(cfg)
    name = "model.layers.0.self_attn.k_proj.weight"
    assert tensor_parameters(plan, name) == {"weight": [0.7, 0.7], "density": [0.4, 1.0], "normalize": True,
                                             "scale": 1.0, "consensus": "sum"}
    w = [load_weights(m)[name] for m in models]
    expected = ties(w[0], w[1:], weight=[0.7, 0.7], density=[0.4, 1.0])
    torch.testing.assert_close(merge_one(plan, name, dict(plan.tensors)[name]), expected)


def test_dare_is_reproducible_per_seed(tmp_path, models):
    def merged(out, seed):
        cfg = _cfg(tmp_path / out, method="dare_ties", base=str(models[0]), seed=seed,
                   models=[str(models[1]), str(models[2])], parameters={"density": 0.5})
        return file_sha256(run_merge(cfg) / "model.safetensors")

    assert merged("a", 1) == merged("b", 1) != merged("c", 2)


def test_adapter_ingredient_is_folded_into_the_base(tmp_path, models):
    adapter = save_adapter(tmp_path / "adapter", models[0], seed=4, use_dora=True)
    out = run_merge(_cfg(tmp_path / "ta", method="task_arithmetic", base=str(models[0]),
                         models=[str(adapter)]))
    expected, merged = merged_with_peft(models[0], adapter), load_weights(out)
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["models"][0]["kind"] == "adapter"
    assert file_sha256(adapter / "adapter_model.safetensors") in lineage["models"][0]["sha256"].values()
    assert "LoRA adapter, folded into the base" in (out / "README.md").read_text()


def test_sharded_bf16_output_with_card_lineage_and_config(tmp_path, models):
    from transformers import AutoModelForCausalLM

    cfg = _cfg(tmp_path / "slerp", method="slerp", base=str(models[0]), models=[str(models[1])],
               parameters={"t": [0.2, 0.8]}, dtype="bf16", max_shard_size="20KB")
    out = run_merge(cfg)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    merged = load_weights(out)
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert torch.equal(model.model.norm.weight.detach(), merged["model.norm.weight"])
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["output"] == {s: file_sha256(out / s) for s in shards}
    assert lineage["base"]["sha256"] == {str(models[0] / "model.safetensors"): file_sha256(models[0] / "model.safetensors")}
    card = (out / "README.md").read_text()
    assert "**slerp**" in card and f"`{models[1]}`" in card and "t=[0.2, 0.8]" in card
    assert load_merge_config(out / "merge_config.yaml") == cfg      # the saved config reruns the merge


# --- bad input: one clear message, nothing written -----------------------------------------------

def _fails(tmp_path, match, **kw):
    out = tmp_path / "new" / "merged"
    with pytest.raises(PolmError, match=match):
        run_merge(_cfg(out, **kw))
    assert not (tmp_path / "new").exists()      # neither the output nor a temp dir nor its parent


def test_mismatched_shapes_name_the_tensor(tmp_path, models, tiny_tokenizer):
    wide = save_llama(tmp_path / "wide", tiny_tokenizer, intermediate_size=48)
    _fails(tmp_path, r"models\[1\] '.*wide': tensor 'model.layers.0.mlp.down_proj.weight' has shape \[32, 48\] "
                     r"here but \[32, 64\] in base", method="ties", base=str(models[0]),
           models=[str(models[1]), str(wide)])


def test_mismatched_vocabularies_are_refused(tmp_path, models, tiny_tokenizer):
    other = save_llama(tmp_path / "other", tiny_tokenizer, seed=5)
    tok = tiny_tokenizer.__class__.from_pretrained(other)
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    _fails(tmp_path, "the vocabularies differ: 398 tokens here but 397", method="linear",
           models=[str(models[0]), str(other)])


def test_mismatched_dtype_and_architecture(tmp_path, models, tiny_tokenizer):
    half = save_llama(tmp_path / "half", tiny_tokenizer, dtype=torch.bfloat16)
    _fails(tmp_path, "tensor 'model.embed_tokens.weight' is bfloat16 here but float32", method="linear",
           models=[str(models[0]), str(half)])
    renamed = tmp_path / "renamed"
    shutil.copytree(models[1], renamed)
    config = json.loads((renamed / "config.json").read_text())
    (renamed / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    _fails(tmp_path, "architectures differ: config.json model_type is 'mistral'", method="linear",
           models=[str(models[0]), str(renamed)])


def test_missing_and_unparsable_ingredients(tmp_path, models):
    _fails(tmp_path, r"models\[1\] 'no/such/model': model 'no/such/model' does not exist", method="linear",
           models=[str(models[0]), "no/such/model"])
    broken = tmp_path / "broken"
    shutil.copytree(models[1], broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    _fails(tmp_path, "does not parse as safetensors", method="linear", models=[str(models[0]), str(broken)])


def test_failure_while_merging_leaves_nothing(tmp_path, models):
    _fails(tmp_path, "merging tensor '.*' failed: linear merge weights sum to 0", method="linear",
           models=[{"model": str(models[0]), "parameters": {"weight": 1}},
                   {"model": str(models[1]), "parameters": {"weight": -1}}])


def test_existing_output_needs_overwrite(tmp_path, models):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PolmError, match="already exists.*overwrite: true"):
        run_merge(_cfg(out, method="linear", models=[str(models[0])]))
    assert (out / "keep.txt").read_text() == "mine"
    run_merge(_cfg(out, method="linear", models=[str(models[0])], overwrite=True))
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(PolmError, match="is one of the inputs"):
        run_merge(_cfg(models[0], method="linear", models=[str(models[0])], overwrite=True))


def test_slerp_between_two_adapters_folds_each_into_the_pretrained_base(tmp_path, models):
    a = save_adapter(tmp_path / "a", models[0], seed=6, target_modules=["q_proj"])
    b = save_adapter(tmp_path / "b", models[0], seed=7, target_modules=["q_proj"])
    out = run_merge(_cfg(tmp_path / "s", method="slerp", base=str(a), models=[str(b)], parameters={"t": 1.0},
                         tokenizer=str(models[0])))
    # t = 1 is the second model alone: adapter b on the pretrained base, not on top of adapter a
    expected = merged_with_peft(models[0], b)
    for name, tensor in load_weights(out).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,parameters", [("linear", {"weight": [0.3, 0.7]}),
                                               ("task_arithmetic", {"weight": [{"filter": "v_proj", "value": 0.4},
                                                                               {"value": [0.5, 1.5]}]})])
def test_adapter_output_equals_the_full_model_merge(tmp_path, models, method, parameters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a = save_adapter(tmp_path / "a", models[0], seed=8, use_rslora=True, alpha_pattern={"v_proj": 3.0})
    b = save_adapter(tmp_path / "b", models[0], seed=9, r=2, target_modules=["q_proj", "up_proj", "embed_tokens"])
    ingredients = [{"model": str(a), "parameters": {"weight": parameters["weight"][0]} if method == "linear" else {}},
                   {"model": str(b), "parameters": {"weight": parameters["weight"][1]} if method == "linear" else {}}]
    shared = {} if method == "linear" else parameters
    full = load_weights(run_merge(_cfg(tmp_path / "full", method=method, base=str(models[0]), models=ingredients,
                                       parameters=shared)))
    out = run_merge(_cfg(tmp_path / "adapter", method=method, base=str(models[0]), models=ingredients,
                         parameters=shared, output_format="adapter"))
    assert not (out / "config.json").exists() and (out / "adapter_config.json").is_file()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models[0]), out).merge_and_unload()
    for name, tensor in merged.state_dict().items():
        if name in full:
            torch.testing.assert_close(tensor, full[name], rtol=1e-5, atol=1e-6)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["rank_pattern"]["model.layers.0.self_attn.q_proj"] == 4 + 2          # ranks stack
    assert config["rank_pattern"]["model.layers.0.mlp.up_proj"] == 2


def test_adapter_output_refuses_what_has_no_low_rank_form(tmp_path, models):
    dora = save_adapter(tmp_path / "dora", models[0], use_dora=True)
    with pytest.raises(PolmError, match="output_format: method 'ties' has no low-rank form"):
        _cfg(tmp_path / "o", method="ties", base=str(models[0]), models=[str(dora)], output_format="adapter")
    _fails(tmp_path, "DoRA magnitudes", method="task_arithmetic", base=str(models[0]), models=[str(dora)],
           output_format="adapter")
    _fails(tmp_path, "is a full model", method="linear", base=str(models[0]), models=[str(models[1])],
           output_format="adapter")
    plain = save_adapter(tmp_path / "plain", models[0])
    _fails(tmp_path, "the base must be a full model", method="task_arithmetic", base=str(plain),
           models=[str(dora)], output_format="adapter")
