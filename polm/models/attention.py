"""Attention for packed rows: causal SDPA on each packed example, so a row of examples T_1..T_n costs
Σ T_i² instead of (Σ T_i)² and no [L, L] block-diagonal mask is built. Registered with transformers.

A packed row (`polm.data.collate.pack_collate`) has `position_ids` that restart at 0 per example and no
attention mask. With `sdpa`, transformers turns the restarts into a block-diagonal causal mask over the
whole row. Under `SEGMENT_ATTENTION` its mask function builds nothing for such a row, and the attention
function splits q, k, v at the restarts (found once per forward, cached on the position_ids tensor) and
runs transformers' own `sdpa_attention_forward` on each segment with `is_causal`. Everything else (padded
batches, a KV cache) goes to plain sdpa with the usual mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

SEGMENT_ATTENTION = "polm_packed_sdpa"


def packed_segments(position_ids: torch.Tensor) -> list[list[int]]:
    """The lengths of the packed segments of each row.  position_ids [B, L] -> B lists summing to L.

    A segment starts where position_ids[t] != position_ids[t-1] + 1 (and at t = 0): transformers' own
    rule (`masking_utils.find_packed_sequence_indices`), so both paths split a row the same way.
    [[0, 1, 2, 0, 0, 1]] -> [[3, 1, 2]]. One host sync.
    """
    starts = torch.diff(position_ids, dim=-1) != 1          # [B, L-1]: a segment starts at t+1
    out = []
    for row in starts.tolist():
        at = [0, *(t + 1 for t, s in enumerate(row) if s), position_ids.shape[1]]
        out.append([b - a for a, b in zip(at, at[1:])])
    return out


def _cached_segments(position_ids: torch.Tensor) -> list[list[int]]:
    """`packed_segments`, computed on the first layer of a forward and kept on the tensor for the others."""
    cached = getattr(position_ids, "_polm_segments", None)
    if cached is not None and cached[0] == position_ids._version:
        return cached[1]
    segments = packed_segments(position_ids)
    position_ids._polm_segments = (position_ids._version, segments)
    return segments


def segment_sdpa_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         position_ids: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed segment.  q [B,H,L,D], k/v [B,Hkv,L,D] -> [B,L,H,D].

    out[b, s:e] = softmax(q[b,s:e] k[b,s:e]ᵀ · scaling + causal) v[b,s:e] for each segment [s, e) of row
    b; a row without restarts, a mask or a KV cache (key longer than query) is plain sdpa.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def sdpa(q, k, v, mask):
        return sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, scaling=scaling, **kwargs)[0]

    if attention_mask is not None or position_ids is None or key.shape[2] != query.shape[2]:
        return sdpa(query, key, value, attention_mask), None
    if position_ids.shape[0] != query.shape[0]:
        position_ids = position_ids.expand(query.shape[0], -1)
    segments = _cached_segments(position_ids)
    if all(len(row) == 1 for row in segments):
        return sdpa(query, key, value, None), None
    rows = []
    for b, lengths in enumerate(segments):
        parts = zip(*(t[b:b + 1].split(lengths, dim=2) for t in (query, key, value)))
        rows.append(torch.cat([sdpa(q, k, v, None) for q, k, v in parts], dim=1))
    return torch.cat(rows, dim=0), None


def segment_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
                 attention_mask: torch.Tensor | None = None, allow_is_causal_skip: bool = True,
                 **kwargs) -> torch.Tensor | None:
    """The sdpa mask, except for a packed row (no padding mask, no cache, a mask that is not plain
    causal): None there, as `segment_sdpa_forward` applies the segments itself."""
    from transformers.masking_utils import sdpa_mask

    packed = (attention_mask is None and not allow_is_causal_skip and kv_length == q_length
              and not isinstance(q_offset, torch.Tensor) and q_offset == 0 and kv_offset == 0)
    if packed:
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask,
                     allow_is_causal_skip=allow_is_causal_skip, **kwargs)


def register_segment_attention() -> None:
    """Register `SEGMENT_ATTENTION` (attention and mask function) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(SEGMENT_ATTENTION, segment_sdpa_forward)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, segment_mask)


def supports_segment_attention(config) -> bool:
    """Whether every layer is plain causal full attention, the only mask that `segment_mask` drops: no
    sliding windows or chunked layers, no vision tower (image tokens change the mask)."""
    if getattr(config, "sub_configs", None):
        return False
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        return False
    sliding = getattr(config, "sliding_window", None)
    return not sliding or getattr(config, "use_sliding_window", True) is False


@contextmanager
def packed_attention(model: torch.nn.Module, mode: str) -> Iterator[bool]:
    """While inside, packed rows run `segment_sdpa_forward` (mode "segment"), or transformers'
    block-diagonal mask (mode "mask"). Yields whether the segment path is on: it replaces `sdpa`
    only (eager, flex and flash keep theirs; flash already runs packed rows per segment) and only on
    models `supports_segment_attention` accepts. The previous implementation is restored on exit."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = getattr(base, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = mode == "segment" and before == "sdpa" and supports_segment_attention(config)
    if switch:
        register_segment_attention()
        base.set_attn_implementation(SEGMENT_ATTENTION)
    try:
        yield switch
    finally:
        if switch:
            base.set_attn_implementation(before)
