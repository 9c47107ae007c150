"""Structured pruning: Block Influence by hand, layer choice, the smaller dense model reloads, runs and keeps shapes."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_llama
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from polm.compress.prune_structured import (
    block_influence,
    drop_count,
    drop_layers,
    heads_to_keep,
    layer_block_influence,
    layers_to_drop,
    prune_width,
    top_indices,
    width_importance,
    width_keep_counts,
)
from polm.errors import PolmError

IDS = [torch.tensor([[5, 9, 12, 40, 7, 3, 100, 8], [2, 4, 6, 8, 10, 12, 14, 16]])]


def bi(h_in, h_out) -> float:
    cos, n = block_influence(torch.tensor(h_in), torch.tensor(h_out))
    return 1 - cos / n


def test_block_influence_by_hand():
    assert bi([[1.0, 2.0], [3.0, -1.0]], [[1.0, 2.0], [3.0, -1.0]]) == pytest.approx(0.0, abs=1e-6)  # identity
    assert bi([[1.0, 0.0]], [[0.0, 5.0]]) == pytest.approx(1.0)           # orthogonal: cos 0
    assert bi([[1.0, 0.0]], [[-2.0, 0.0]]) == pytest.approx(2.0)          # reversed: cos -1
    # mean over tokens: cos 1 (scaled copy) and cos 1/√2 -> BI = 1 - (1 + 0.7071)/2
    assert bi([[1.0, 1.0], [1.0, 0.0]], [[3.0, 3.0], [1.0, 1.0]]) == pytest.approx(1 - (1 + 2 ** -0.5) / 2)


def test_identity_layer_has_zero_block_influence(tiny_tokenizer):
    model = build_tiny_llama(len(tiny_tokenizer))
    layer = model.model.layers[1]
    for proj in (layer.self_attn.o_proj, layer.mlp.down_proj):   # residual branches write zero: h_out = h_in
        torch.nn.init.zeros_(proj.weight)
    scores = layer_block_influence(model, IDS)
    assert scores[1] == pytest.approx(0.0, abs=1e-6)
    assert scores[0] > 1e-3
    assert layers_to_drop(scores, 1) == [1]


def test_layers_to_drop_takes_the_lowest_in_index_order():
    assert layers_to_drop([0.5, 0.1, 0.9, 0.1], 2) == [1, 3]
    assert layers_to_drop([0.5, 0.1, 0.9, 0.2], 3) == [0, 1, 3]
    assert layers_to_drop([0.5, 0.1], 0) == []


def test_drop_count_from_count_or_fraction_and_refusals():
    assert drop_count(8, 3, 0.0) == 3
    assert drop_count(8, 0, 0.25) == 2
    with pytest.raises(PolmError, match="cannot drop 2 of the model's 2 decoder layers"):
        drop_count(2, 2, 0.0)
    with pytest.raises(PolmError, match="not both"):
        drop_count(8, 1, 0.5)


def test_dropping_zero_layers_gives_identical_logits(tiny_tokenizer):
    model = build_tiny_llama(len(tiny_tokenizer))
    same = drop_layers(model, [])
    torch.testing.assert_close(same(IDS[0]).logits, model(IDS[0]).logits, rtol=0, atol=0)


def test_dropped_model_saves_reloads_and_equals_running_the_kept_layers(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    small = drop_layers(model, [1])
    small.save_pretrained(tmp_path / "small")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    assert reloaded.config.num_hidden_layers == 2
    del model.model.layers[1]                      # the same network, by hand
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    expected = model(IDS[0]).logits
    torch.testing.assert_close(reloaded(IDS[0]).logits, expected)
    assert reloaded(IDS[0]).logits.shape == (2, 8, len(tiny_tokenizer))


def test_top_indices_and_heads_kept_per_kv_group():
    assert top_indices(torch.tensor([0.3, 0.9, 0.1, 0.5]), 2).tolist() == [1, 3]
    # 6 query heads, 2 KV groups of 3: group 0 = heads 0-2, group 1 = heads 3-5
    scores = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.3, 0.8])
    assert heads_to_keep(scores, n_kv=2, keep_per_group=2).tolist() == [0, 2, 4, 5]
    assert heads_to_keep(scores, n_kv=2, keep_per_group=1).tolist() == [0, 5]


def test_width_keep_counts_round_the_removed_part_down(tiny_llama):
    assert width_keep_counts(tiny_llama.config, 0.25, 0.5) == (48, 1)   # 64 neurons, 2 query heads per group
    with pytest.raises(PolmError, match=r"width.mlp_fraction must be in \[0, 1\)"):
        width_keep_counts(tiny_llama.config, 1.0, 0.0)


def test_width_importance_is_mean_abs_activation(tiny_llama):
    seen = []
    handle = tiny_llama.model.layers[0].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    mlp, heads = width_importance(tiny_llama, IDS)
    handle.remove()
    torch.testing.assert_close(mlp[0], seen[0].abs().mean(dim=(0, 1)))
    assert [h.shape[0] for h in heads] == [4, 4]


def test_width_pruned_model_is_dense_smaller_reloads_and_keeps_output_shape(tmp_path, tiny_llama):
    mlp, heads = width_importance(tiny_llama, IDS)
    small = prune_width(tiny_llama, mlp, heads, mlp_keep=48, heads_per_group=1)
    small.save_pretrained(tmp_path / "w")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "w").eval()
    c = reloaded.config
    assert (c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (48, 2, 2, 8)
    assert reloaded.model.layers[0].self_attn.q_proj.weight.shape == (16, 32)
    assert reloaded(IDS[0]).logits.shape == tiny_llama(IDS[0]).logits.shape
    torch.testing.assert_close(reloaded(IDS[0]).logits, small(IDS[0]).logits)
    full = prune_width(tiny_llama, mlp, heads, mlp_keep=64, heads_per_group=2)   # keep everything: same model
    torch.testing.assert_close(full(IDS[0]).logits, tiny_llama(IDS[0]).logits)
