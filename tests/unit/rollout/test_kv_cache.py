"""The in-place KV cache: the same keys/values as transformers' DynamicCache through prefill, row
repeats, row selection and decode steps, without re-allocating its buffers on a decode step."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from polm.rollout.kv_cache import PreallocatedLayer, preallocated_cache


def _kv(batch, t, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, t, 4, generator=g), torch.randn(batch, 2, t, 4, generator=g)


def test_matches_dynamic_cache_through_repeat_select_and_decode(tiny_llama):
    ours, ref = preallocated_cache(tiny_llama.config, capacity=8), DynamicCache(config=tiny_llama.config)
    assert all(type(layer) is PreallocatedLayer for layer in ours.layers) and len(ours.layers) == 2
    steps = [("update", 2, 3), ("repeat", 2), ("update", 4, 1), ("select", torch.tensor([0, 3])),
             ("update", 2, 1), ("update", 2, 1)]
    for seed, op in enumerate(steps):
        for cache in (ours, ref):
            if op[0] == "update":
                for layer in range(2):
                    cache.update(*_kv(op[1], op[2], seed * 10 + layer), layer)
            elif op[0] == "repeat":
                cache.batch_repeat_interleave(op[1])
            else:
                cache.batch_select_indices(op[1])
    assert ours.get_seq_length() == ref.get_seq_length() == 6
    for a, b in zip(ours.layers, ref.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_a_decode_step_writes_in_place_and_past_capacity_it_grows():
    layer = PreallocatedLayer(capacity=4)
    layer.update(*_kv(1, 3, 0))
    buffer = layer.keys.untyped_storage().data_ptr()
    layer.update(*_kv(1, 1, 1))
    assert layer.keys.untyped_storage().data_ptr() == buffer and layer.get_seq_length() == 4
    k, v = _kv(1, 1, 2)
    keys, _ = layer.update(k, v)
    assert layer.get_seq_length() == 5 and torch.equal(keys[:, :, -1:], k)
