"""A KV cache that grows in place: each layer's keys and values live in buffers preallocated for the
whole generation, so a decode step writes one position instead of re-concatenating the cache."""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose `keys`/`values` [B,H,n,D] are views of [B,H,capacity,D] buffers.

    transformers' DynamicLayer concatenates on every update, copying the whole cache (2·B·H·n·D values
    per layer per step, a fresh allocation each time); here an update writes its t positions into the
    buffer. Attention reads the first n positions, as before. Past the capacity it falls back to
    concatenation (the buffer grows to the new length)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        batch, heads = key_states.shape[:2]
        self._keys = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
        self._values = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
        self._view(0)
        self.is_initialized = True

    def _view(self, n: int) -> None:
        self.keys, self.values = self._keys[:, :, :n], self._values[:, :, :n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, t = self.keys.shape[-2], key_states.shape[-2]
        if n + t > self._keys.shape[-2]:
            self._keys = torch.cat([self._keys[:, :, :n], key_states], dim=-2)
            self._values = torch.cat([self._values[:, :, :n], value_states], dim=-2)
        else:
            self._keys[:, :, n:n + t].copy_(key_states)
            self._values[:, :, n:n + t].copy_(value_states)
        self._view(n + t)
        return self.keys, self.values

    def _rows(self, pick) -> None:
        n = self.keys.shape[-2]
        self._keys, self._values = pick(self._keys), pick(self._values)
        self._view(n)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._rows(lambda t: t[indices])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx.to(self.device))

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.is_initialized:
            self._view(self.keys.shape[-2])


def preallocated_cache(config, capacity: int) -> Cache:
    """transformers' DynamicCache for `config` with every full-attention layer preallocated for
    `capacity` positions (prompt + new tokens). Sliding-window and other special layers keep their own."""
    cache = DynamicCache(config=config)
    cache.layers = [PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
