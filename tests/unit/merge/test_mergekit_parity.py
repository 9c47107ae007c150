"""Parity with mergekit (test-only dependency: pip install mergekit==0.1.5): same inputs, same tensors to 1e-6.

Per tensor for every method mergekit shares with polm (DARE with the same seeded mask stream and
mergekit's L1 rescale), and per model through both tools' full runners, with per-model parameters,
layer gradients, name filters and a LoRA adapter as an ingredient.
"""

from __future__ import annotations

import pytest
import torch
from merge_models import load_weights, save_adapter, save_llama
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge as mergekit_run_merge
from mergekit.merge_methods.api import merge_tensors
from mergekit.options import MergeOptions

import polm.merge.methods as polm_methods
from polm.merge.config import MergeConfig
from polm.merge.runner import run_merge

W, D = {"a": 0.7, "b": 0.4}, {"a": 0.5, "b": 0.8}
PER_TENSOR = [
    ("linear", {"weight": W}, {"weight": [0.7, 0.4]}),
    ("linear", {"weight": W, "normalize": False}, {"weight": [0.7, 0.4], "normalize": False}),
    ("task_arithmetic", {"weight": W, "lambda": 0.8}, {"weight": [0.7, 0.4], "scale": 0.8}),
    ("ties", {"weight": W, "density": D}, {"weight": [0.7, 0.4], "density": [0.5, 0.8]}),
    ("ties", {"weight": W, "density": D, "normalize": False}, {"weight": [0.7, 0.4], "density": [0.5, 0.8],
                                                               "normalize": False}),
    ("dare_linear", {"weight": W, "density": D}, {"weight": [0.7, 0.4], "density": [0.5, 0.8], "rescale": "l1"}),
    ("dare_ties", {"weight": W, "density": D}, {"weight": [0.7, 0.4], "density": [0.5, 0.8], "rescale": "l1"}),
    ("dare_ties", {"weight": W, "density": D, "rescale": False},
     {"weight": [0.7, 0.4], "density": [0.5, 0.8], "rescale": "none"}),
    ("slerp", {"t": 0.3}, {"t": 0.3}),
]


@pytest.mark.parametrize(("method", "theirs", "ours"), PER_TENSOR, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(PER_TENSOR)])
@pytest.mark.parametrize("shape", [(24, 16), (1200, 1000)], ids=["small", "1.2M"])
def test_each_method_matches_mergekit_per_tensor(method, theirs, ours, shape):
    g = torch.Generator().manual_seed(0)
    base, a, b = (torch.randn(shape, generator=g) * 0.02 for _ in range(3))
    ids, inputs, others = ["base", "a", "b"], [base, a, b], [a, b]
    if method == "slerp":
        ids, inputs, others = ["base", "a"], [base, a], [a]
    if method == "linear":
        ids, inputs = ["a", "b"], [a, b]
    torch.manual_seed(11)                       # mergekit draws DARE masks from the global generator
    expected = merge_tensors(inputs, method, parameters=theirs, ids=ids,
                             base_index=None if method == "linear" else 0)
    fn = polm_methods.MERGE_METHODS.get(method)
    kwargs = dict(ours, generator=torch.Generator().manual_seed(11)) if polm_methods.method_spec(method).random else ours
    got = fn(None if method == "linear" else base, others, **kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("parity")
    return [save_llama(root / f"m{seed}", tiny_tokenizer, seed=seed) for seed in range(3)]


GRADIENT = [{"filter": "self_attn", "value": [0.2, 0.9]}, {"filter": "mlp", "value": 0.6}, {"value": 0.5}]
PER_MODEL = [
    ("linear", False, {"weight": GRADIENT}, {"weight": 1.0}, {}),
    ("task_arithmetic", True, {"weight": [0.3, 1.0]}, {"weight": GRADIENT}, {"normalize": True}),
    ("ties", True, {"weight": 1.0, "density": [0.3, 0.9]}, {"weight": 0.5, "density": GRADIENT}, {}),
    ("slerp", True, None, None, {"t": [0.0, 0.3, 0.7, 1.0]}),
]


@pytest.mark.parametrize(("method", "uses_base", "p1", "p2", "shared"), PER_MODEL, ids=[m[0] for m in PER_MODEL])
def test_whole_model_matches_mergekit(tmp_path, models, method, uses_base, p1, p2, shared):
    base, m1, m2 = (str(m) for m in models)
    entries = [{"model": m1, "parameters": p1}] + ([] if method == "slerp" else [{"model": m2, "parameters": p2}])
    entries = [e if e["parameters"] else {"model": e["model"]} for e in entries]
    mk = {"merge_method": method, "models": entries, "parameters": shared, "dtype": "float32"}
    if uses_base:
        mk["base_model"] = base
    mergekit_run_merge(MergeConfiguration.model_validate(mk), str(tmp_path / "mergekit"), options=MergeOptions())
    cfg = MergeConfig(method=method, base=base if uses_base else None, models=entries, parameters=shared,
                      output=str(tmp_path / "polm"))
    cfg.validate()
    theirs, ours = load_weights(tmp_path / "mergekit"), load_weights(run_merge(cfg))
    assert set(ours) == set(theirs)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6, msg=name)


def test_lora_ingredient_matches_mergekit_base_plus_adapter(tmp_path, models):
    adapter = save_adapter(tmp_path / "adapter", models[0], seed=3, target_modules=["q_proj", "up_proj"])
    mk = {"merge_method": "ties", "base_model": str(models[0]), "dtype": "float32",
          "models": [{"model": f"{models[0]}+{adapter}", "parameters": {"weight": 1.0, "density": 0.5}},
                     {"model": str(models[1]), "parameters": {"weight": 0.5, "density": 0.5}}]}
    mergekit_run_merge(MergeConfiguration.model_validate(mk), str(tmp_path / "mergekit"),
                       options=MergeOptions(lora_merge_cache=str(tmp_path / "cache")))
    cfg = MergeConfig(method="ties", base=str(models[0]), output=str(tmp_path / "polm"),
                      models=[{"model": str(adapter), "parameters": {"weight": 1.0, "density": 0.5}},
                              {"model": str(models[1]), "parameters": {"weight": 0.5, "density": 0.5}}])
    cfg.validate()
    theirs, ours = load_weights(tmp_path / "mergekit"), load_weights(run_merge(cfg))
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6, msg=name)
