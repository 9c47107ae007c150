"""The streaming safetensors writer produces files the safetensors library reads back bit for bit."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from polm.merge.sources import TensorMeta
from polm.merge.writer import ShardWriter, plan_shards, shard_names


def _meta(t: torch.Tensor) -> TensorMeta:
    return TensorMeta(tuple(t.shape), t.dtype)


def test_round_trip_of_every_common_dtype_and_shape(tmp_path):
    tensors = {
        "a.f32": torch.randn(3, 5),
        "b.bf16": torch.randn(7).to(torch.bfloat16),
        "c.f16": torch.randn(2, 2, 2).half(),
        "d.i64": torch.arange(5),
        "e.bool": torch.tensor([True, False, True]),
        "f.scalar": torch.tensor(2.5),
        "g.empty": torch.zeros(0, 4),
        "h.f64": torch.randn(3, dtype=torch.float64),
    }
    path = tmp_path / "model.safetensors"
    with ShardWriter(path, [(k, _meta(v)) for k, v in tensors.items()], {"merged_by": "polm"}) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
    loaded = load_file(path)
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor)
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"format": "pt", "merged_by": "polm"}


def test_non_contiguous_tensors_are_written_in_logical_order(tmp_path):
    t = torch.arange(12.0).reshape(3, 4).T
    with ShardWriter(tmp_path / "x.safetensors", [("t", _meta(t))]) as writer:
        writer.write("t", t)
    assert torch.equal(load_file(tmp_path / "x.safetensors")["t"], t)


def test_out_of_plan_writes_are_refused(tmp_path):
    a, b = torch.zeros(2), torch.ones(3)
    writer = ShardWriter(tmp_path / "x.safetensors", [("a", _meta(a)), ("b", _meta(b))])
    with pytest.raises(RuntimeError, match="expected a"):
        writer.write("b", b)
    writer.write("a", a)
    with pytest.raises(RuntimeError, match="wrote 1 of 2"):
        writer.close()


def test_plan_shards_fills_in_order_and_isolates_oversized_tensors():
    sizes = {"a": 10, "b": 10, "c": 25, "d": 2, "e": 5}          # float32 elements -> 4 bytes each
    entries = [(k, TensorMeta((n,), torch.float32)) for k, n in sizes.items()]
    shards = plan_shards(entries, max_bytes=64)
    # a+b = 80 B > 64 -> split; c = 100 B alone; d+e = 28 B together
    assert [[name for name, _ in shard] for shard in shards] == [["a"], ["b"], ["c"], ["d", "e"]]
    assert shard_names(1) == ["model.safetensors"]
    assert shard_names(2) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
