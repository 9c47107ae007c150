"""Per-segment attention for packed rows: same logits and gradients as transformers' block-diagonal
mask (and as each example run alone), no [L, L] tensor, plain sdpa for everything that is not packed."""

from __future__ import annotations

import pytest
import torch
from conftest import LargestTensor

from polm.data.collate import pack_collate
from polm.models import LoraConfig, attach_adapter
from polm.models.attention import (
    SEGMENT_ATTENTION,
    packed_attention,
    packed_segments,
    supports_segment_attention,
)

LENGTHS = [5, 1, 7, 1, 3, 2]          # segments of length 1 included, also at a boundary pair


def _examples(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(4, vocab, (n,), generator=g).tolist(),
             "labels": torch.randint(4, vocab, (n,), generator=g).tolist()} for n in lengths]


def _forward_backward(model, batch):
    """logits [1,L,V] and every trainable gradient after backward of Σ logits² (each output matters)."""
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    logits.pow(2).sum().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def _assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    assert len(a[1]) == len(b[1]) > 0
    for x, y in zip(a[1], b[1]):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_packed_segments_by_hand():
    assert packed_segments(torch.tensor([[0, 1, 2, 0, 0, 1]])) == [[3, 1, 2]]
    assert packed_segments(torch.tensor([[0, 1, 2, 3]])) == [[4]]
    assert packed_segments(torch.tensor([[0, 0, 0], [0, 1, 0]])) == [[1, 1, 1], [2, 1]]


@pytest.mark.parametrize("lora", [False, True])
def test_logits_and_gradients_equal_the_block_mask_path(tiny_llama, tiny_tokenizer, lora):
    model = tiny_llama
    if lora:
        model = attach_adapter(model, LoraConfig(r=4, alpha=8, dropout=0.0))
        with torch.no_grad():                        # a non-zero B, so LoRA's gradients are not all zero
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    model.train()
    batch = pack_collate(_examples(LENGTHS, len(tiny_tokenizer)))
    masked = _forward_backward(model, batch)
    with packed_attention(model, "segment") as on:
        assert on and model.config._attn_implementation == SEGMENT_ATTENTION
        segment = _forward_backward(model, batch)
    assert model.config._attn_implementation == "sdpa"
    _assert_same(segment, masked)


def test_each_segment_sees_only_itself(tiny_llama, tiny_tokenizer):
    """The packed row's logits are each example's logits run alone."""
    examples = _examples(LENGTHS, len(tiny_tokenizer), seed=1)
    with torch.no_grad(), packed_attention(tiny_llama, "segment"):
        packed = tiny_llama(**{k: v for k, v in pack_collate(examples).items() if k != "labels"},
                            use_cache=False).logits
    with torch.no_grad():
        alone = torch.cat([tiny_llama(input_ids=torch.tensor([e["input_ids"]]), use_cache=False).logits
                           for e in examples], dim=1)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_no_row_by_row_tensor_is_built(tiny_llama, tiny_tokenizer):
    """A 512-token row of five examples: the mask path allocates ≥ L² elements (the [1,1,L,L] mask),
    the segment path nothing that large (its biggest are the [L,V] logits)."""
    lengths = [200, 1, 150, 1, 160]
    batch = pack_collate(_examples(lengths, len(tiny_tokenizer), seed=2))
    L = sum(lengths)
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    with torch.no_grad():
        with LargestTensor() as mask_path:
            tiny_llama(**inputs)
        with packed_attention(tiny_llama, "segment"), LargestTensor() as segment_path:
            tiny_llama(**inputs)
    assert mask_path.largest >= L * L
    assert segment_path.largest < L * L and segment_path.largest <= L * len(tiny_tokenizer)


def test_segments_are_found_once_per_forward(tiny_llama, tiny_tokenizer, monkeypatch):
    import polm.models.attention as attention

    calls = []
    real = attention.packed_segments
    monkeypatch.setattr(attention, "packed_segments", lambda p: calls.append(1) or real(p))
    batch = pack_collate(_examples(LENGTHS, len(tiny_tokenizer)))
    with torch.no_grad(), packed_attention(tiny_llama, "segment"):
        for _ in range(2):   # the second forward gets a new position_ids tensor, the third the same again
            position_ids = batch["position_ids"].clone()
            tiny_llama(input_ids=batch["input_ids"], position_ids=position_ids, use_cache=False)
        tiny_llama(input_ids=batch["input_ids"], position_ids=position_ids, use_cache=False)
    assert tiny_llama.config.num_hidden_layers == 2 and len(calls) == 2


def test_padded_batches_and_cached_generation_are_plain_sdpa(tiny_llama, tiny_tokenizer):
    """Not packed: a right-padded batch's logits and greedy generation are those of sdpa."""
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        ref = tiny_llama(input_ids=ids, attention_mask=mask, use_cache=False).logits
        ref_gen = tiny_llama.generate(input_ids=ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
        with packed_attention(tiny_llama, "segment"):
            got = tiny_llama(input_ids=ids, attention_mask=mask, use_cache=False).logits
            got_gen = tiny_llama.generate(input_ids=ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
    torch.testing.assert_close(got[mask.bool()], ref[mask.bool()], atol=1e-6, rtol=1e-6)
    assert got_gen.tolist() == ref_gen.tolist()


def test_mask_mode_and_unsupported_models_keep_their_attention(tiny_llama):
    with packed_attention(tiny_llama, "mask") as on:
        assert not on and tiny_llama.config._attn_implementation == "sdpa"
    tiny_llama.set_attn_implementation("eager")
    with packed_attention(tiny_llama, "segment") as on:
        assert not on and tiny_llama.config._attn_implementation == "eager"
    from transformers import MistralConfig

    assert supports_segment_attention(tiny_llama.config)
    assert not supports_segment_attention(MistralConfig(sliding_window=16))
    assert supports_segment_attention(MistralConfig(sliding_window=None))
