"""polm.ops.logprobs against hand-derived values and the plain full-logits computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import LargestTensor

from polm.ops import (
    causal_lm_loss,
    causal_targets,
    chunked_cross_entropy,
    masked_mean,
    masked_sum,
    model_logprobs,
    token_logprobs,
)
from polm.ops.logprobs import _plain_head


def plain_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    lp = logits.float().log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return lp * (targets != -100)


def test_causal_targets_shift_and_packing_boundaries():
    labels = torch.tensor([[-100, 2, 3, 4]])
    assert causal_targets(labels).tolist() == [[2, 3, 4, -100]]
    # two packed sequences [5 6] [7 8]: position 2 restarts at 0, so 6 never "predicts" 7
    packed = torch.tensor([[5, 6, 7, 8]])
    positions = torch.tensor([[0, 1, 0, 1]])
    assert causal_targets(packed, positions).tolist() == [[6, -100, 8, -100]]


def test_token_logprobs_hand_value_1x2x3():
    # row 0: softmax([0, ln2, ln5]) = [1/8, 2/8, 5/8], target 2 -> ln(5/8)
    # row 1: uniform over 3, target 0 -> -ln 3
    logits = torch.tensor([[[0.0, math.log(2), math.log(5)], [0.0, 0.0, 0.0]]])
    out = token_logprobs(logits, torch.tensor([[2, 0]]))
    torch.testing.assert_close(out, torch.tensor([[math.log(5 / 8), -math.log(3)]]))
    ignored = token_logprobs(logits, torch.tensor([[2, -100]]))
    assert ignored[0, 1].item() == 0.0


@pytest.mark.parametrize("chunk_size", [None, 1, 5, 64])
def test_token_logprobs_and_grads_match_log_softmax(chunk_size):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11, requires_grad=True)
    targets = torch.randint(0, 11, (3, 7))
    targets[0, :3] = -100
    weights = torch.randn(3, 7)
    out = token_logprobs(logits, targets, chunk_size)
    (out * weights).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    expected = plain_logprobs(logits, targets)
    (expected * weights).sum().backward()
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours, logits.grad, atol=1e-6, rtol=1e-6)


def test_token_logprobs_bf16_logits_are_upcast():
    torch.manual_seed(0)
    logits = (torch.randn(2, 4, 50) * 3).to(torch.bfloat16)
    targets = torch.randint(0, 50, (2, 4))
    out = token_logprobs(logits, targets, chunk_size=3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, plain_logprobs(logits, targets))


def test_masked_sum_and_mean_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), 6.0]])
    mask = torch.tensor([[1, 0, 1], [0, 0, 0]])
    assert masked_sum(x, mask).item() == 4.0
    assert masked_mean(x, mask).item() == 2.0                    # (1 + 3) / 2
    assert masked_mean(x, mask, dim=1).tolist() == [2.0, 0.0]    # empty row -> 0, NaN never leaks
    assert masked_sum(x, mask, dim=0).tolist() == [1.0, 0.0, 3.0]
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def _plain_ce_grads(hidden, weight, targets, scale):
    hidden = hidden.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(weight.requires_grad)
    loss = F.cross_entropy((hidden @ weight.T).reshape(-1, weight.shape[0]), targets.reshape(-1), reduction="sum")
    (scale * loss).backward()
    return loss, hidden.grad, weight.grad


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
@pytest.mark.parametrize("frozen_weight", [False, True])
def test_chunked_cross_entropy_matches_full_logits(chunk_size, frozen_weight):
    torch.manual_seed(0)
    hidden = torch.randn(2, 13, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=not frozen_weight)
    targets = torch.randint(0, 40, (2, 13))
    targets[:, ::4] = -100
    loss = chunked_cross_entropy(hidden, weight, targets, chunk_size)
    (2.5 * loss).backward()   # backward must scale the saved grads by grad_output
    ref_loss, ref_h, ref_w = _plain_ce_grads(hidden, weight, targets, 2.5)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden.grad, ref_h, atol=1e-5, rtol=1e-5)
    if frozen_weight:
        assert weight.grad is None
    else:
        torch.testing.assert_close(weight.grad, ref_w, atol=1e-5, rtol=1e-5)


def test_chunked_cross_entropy_tied_embedding_gets_both_gradients():
    torch.manual_seed(0)
    ids = torch.randint(0, 30, (3, 9))
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    results = []
    for chunked in (True, False):
        torch.manual_seed(1)
        emb = torch.nn.Embedding(30, 8)
        proj = torch.nn.Linear(8, 8)
        hidden = torch.tanh(proj(emb(ids)))
        if chunked:
            loss = chunked_cross_entropy(hidden, emb.weight, targets, chunk_size=4)
        else:
            loss = F.cross_entropy((hidden @ emb.weight.T).reshape(-1, 30), targets.reshape(-1), reduction="sum")
        loss.backward()
        results.append((loss.detach(), emb.weight.grad, proj.weight.grad))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_chunked_cross_entropy_without_grad_and_all_ignored():
    torch.manual_seed(0)
    hidden, weight = torch.randn(6, 4), torch.randn(9, 4)
    targets = torch.tensor([1, 2, -100, 3, 4, 5])
    with torch.no_grad():
        loss = chunked_cross_entropy(hidden, weight, targets, chunk_size=4)
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.T, targets, reduction="sum"))
    h = hidden.clone().requires_grad_(True)
    empty = chunked_cross_entropy(h, weight, torch.full((6,), -100), chunk_size=4)
    empty.backward()
    assert empty.item() == 0.0 and h.grad.abs().sum().item() == 0.0


def test_chunked_cross_entropy_never_builds_full_logits():
    torch.manual_seed(0)
    n, vocab, width, chunk = 256, 4096, 16, 32
    hidden = torch.randn(n, width, requires_grad=True)
    weight = torch.randn(vocab, width, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    with LargestTensor() as chunked:
        chunked_cross_entropy(hidden, weight, targets, chunk_size=chunk).backward()
    with LargestTensor() as plain:
        F.cross_entropy(hidden @ weight.T, targets, reduction="sum").backward()
    assert plain.largest >= n * vocab
    assert chunked.largest <= chunk * vocab   # one chunk of logits at a time, 8x smaller here


def _padded_batch(vocab: int) -> dict:
    torch.manual_seed(3)
    ids = torch.randint(4, vocab, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100          # prompt tokens
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _packed_batch(vocab: int) -> dict:
    torch.manual_seed(4)
    lengths = [6, 4, 5]
    ids = torch.randint(4, vocab, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[positions == 0] = -100
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def _loss_and_grads(model, batch, chunk_size):
    model.zero_grad()
    loss, count = causal_lm_loss(model, batch, chunk_size=chunk_size)
    loss.backward()
    return loss.detach(), count, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("make_batch", [_padded_batch, _packed_batch])
def test_causal_lm_loss_chunked_equals_plain_on_tiny_llama(tiny_llama, make_batch):
    batch = make_batch(tiny_llama.config.vocab_size)
    loss_c, count_c, grads_c = _loss_and_grads(tiny_llama, batch, chunk_size=4)
    loss_p, count_p, grads_p = _loss_and_grads(tiny_llama, batch, chunk_size=None)
    expected_count = int((causal_targets(batch["labels"], batch.get("position_ids")) != -100).sum())
    assert count_c == count_p == expected_count
    torch.testing.assert_close(loss_c, loss_p, atol=1e-5, rtol=1e-5)
    assert grads_c.keys() == grads_p.keys()
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], atol=1e-5, rtol=1e-4)
    # and the plain path is the full-logits cross-entropy sum
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = tiny_llama(**inputs, use_cache=False).logits
    targets = causal_targets(batch["labels"], batch.get("position_ids"))
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    torch.testing.assert_close(loss_p, ref, atol=1e-5, rtol=1e-5)


def test_packed_loss_equals_sum_of_separate_sequences(tiny_llama):
    # HF only isolates packed sequences when no KV cache is built: causal_lm_loss must disable it
    batch = _packed_batch(tiny_llama.config.vocab_size)
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
    separate = 0.0
    with torch.no_grad():
        packed, count = causal_lm_loss(tiny_llama, batch, chunk_size=4)
        for a, b in zip(starts[:-1], starts[1:]):
            one = {"input_ids": batch["input_ids"][:, a:b], "labels": batch["labels"][:, a:b]}
            separate += causal_lm_loss(tiny_llama, one, chunk_size=None)[0]
    assert count == (6 - 1) + (4 - 1) + (5 - 1)   # a sequence of n tokens has n - 1 targets
    torch.testing.assert_close(packed, separate, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "lm_head"]])
def test_causal_lm_loss_with_lora(tiny_llama, targets):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_llama, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    # the hidden-state shortcut is only valid while lm_head is a plain Linear
    assert (_plain_head(model) is not None) == ("lm_head" not in targets)
    batch = _padded_batch(tiny_llama.config.vocab_size)
    loss_c, _, grads_c = _loss_and_grads(model, batch, chunk_size=4)
    loss_p, _, grads_p = _loss_and_grads(model, batch, chunk_size=None)
    torch.testing.assert_close(loss_c, loss_p, atol=1e-5, rtol=1e-5)
    assert grads_c.keys() == grads_p.keys() and all("lora_" in n for n in grads_p)
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], atol=1e-5, rtol=1e-4)


def test_causal_lm_loss_respects_logit_softcapping():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                          final_logit_softcapping=0.5)   # a tiny cap changes the loss a lot
    model = Gemma2ForCausalLM(config)
    batch = _padded_batch(64)
    chunked, _ = causal_lm_loss(model, batch, chunk_size=4)
    plain, _ = causal_lm_loss(model, batch, chunk_size=None)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=1e-5)


def row_logprobs(model, batch: dict, chunk_size: int | None) -> torch.Tensor:
    """Σ_t log p(target_t) per row [B], as DPO's log π(y|x) takes it from `model_logprobs`."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    return model_logprobs(model, inputs, causal_targets(batch["labels"], batch.get("position_ids")),
                          chunk_size).logprobs.sum(-1)


def test_model_logprobs_sums_target_tokens_per_row(tiny_llama):
    batch = _padded_batch(tiny_llama.config.vocab_size)
    with torch.no_grad():
        out = row_logprobs(tiny_llama, batch, chunk_size=7)
        logits = tiny_llama(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = plain_logprobs(logits, causal_targets(batch["labels"])).sum(-1)
    assert out.shape == (3,)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make_batch", [_padded_batch, _packed_batch])
@pytest.mark.parametrize("lora", [False, True])
def test_model_logprobs_fused_head_equals_logits_path(tiny_llama, make_batch, lora):
    """DPO's log π(y|x): the hidden-state path (no [B,T,V] logits) gives the logits path's values and
    gradients, for full fine-tuning (the tied head gets its gradient) and LoRA."""
    model = tiny_llama.train()
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = make_batch(tiny_llama.config.vocab_size)
    results = []
    for chunk_size in (4, None):
        model.zero_grad()
        with LargestTensor() as probe:   # the forward: the [B,T,V] logits would be its largest tensor
            out = row_logprobs(model, batch, chunk_size=chunk_size)
        (out * torch.linspace(-1.0, 2.0, out.shape[0])).sum().backward()   # a DPO-like weighting of rows
        results.append((out.detach(), probe.largest,
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (fused, largest_f, grads_f), (plain, largest_p, grads_p) = results
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    assert largest_f < batch["input_ids"].numel() * tiny_llama.config.vocab_size <= largest_p
    assert grads_f.keys() == grads_p.keys() and grads_p
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], atol=1e-5, rtol=1e-4)
