"""Streaming safetensors writer: the header is known up front, tensors are appended one at a time.

A safetensors file is an 8-byte little-endian header length, a JSON header giving each tensor's dtype,
shape and byte range, then the raw bytes in that order. Since a merge knows every output shape and
dtype before it starts, the header is written first and each merged tensor goes straight to disk,
so no shard is ever assembled in memory.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import TracebackType

import torch

from polm.merge.sources import SAFETENSORS_DTYPES, TensorMeta

_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


def plan_shards(entries: list[tuple[str, TensorMeta]], max_bytes: int) -> list[list[tuple[str, TensorMeta]]]:
    """Split tensors, in order, into shards of at most `max_bytes` (a larger tensor gets a shard alone)."""
    shards: list[list[tuple[str, TensorMeta]]] = [[]]
    size = 0
    for name, meta in entries:
        if shards[-1] and size + meta.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, meta))
        size += meta.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class ShardWriter:
    """Write one safetensors file whose tensors arrive in the planned order."""

    def __init__(self, path: Path, entries: list[tuple[str, TensorMeta]], metadata: dict[str, str] | None = None):
        self.path, self.entries, self._next = path, entries, 0
        header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
        offset = 0
        for name, meta in entries:
            header[name] = {"dtype": _CODES[meta.dtype], "shape": list(meta.shape),
                            "data_offsets": [offset, offset + meta.nbytes]}
            offset += meta.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)                      # the data section starts 8-byte aligned
        self._fh = open(path, "wb")
        self._fh.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected, meta = self.entries[self._next]
        if name != expected or tuple(tensor.shape) != meta.shape or tensor.dtype != meta.dtype:
            raise RuntimeError(f"writer expected {expected} {meta}, got {name} {tuple(tensor.shape)} {tensor.dtype}")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        self._fh.write(data.numpy().data)
        self._next += 1

    def close(self) -> None:
        self._fh.close()
        if self._next != len(self.entries):
            raise RuntimeError(f"{self.path.name}: wrote {self._next} of {len(self.entries)} tensors")

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self._fh.close()
