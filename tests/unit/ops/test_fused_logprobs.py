"""polm.ops.fused_token_logprobs (log-probs and entropy straight from hidden states and the output
layer) against hand-derived values, the plain log_softmax path and torch.autograd.gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import LargestTensor

from polm.ops import fused_token_logprobs


def plain_logprobs_and_entropy(hidden, weight, targets, temperature=1.0):
    """The naive path: full [N,V] logits, log_softmax, gather; entropy = lse - Σ softmax·z."""
    z = (hidden @ weight.T).float() / temperature
    valid = targets != -100
    logp = z.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    entropy = z.logsumexp(-1) - (z.softmax(-1) * z).sum(-1)
    return logp * valid, (entropy * valid).detach()


def _random_case(seed=0, dtype=torch.float32, weight_grad=True):
    torch.manual_seed(seed)
    hidden = torch.randn(3, 7, 16, dtype=dtype, requires_grad=True)
    weight = torch.randn(50, 16, dtype=dtype, requires_grad=weight_grad)
    targets = torch.randint(0, 50, (3, 7))
    targets[0, :3] = -100            # a prompt
    targets[2, -2:] = -100           # padding
    return hidden, weight, targets, torch.randn(3, 7, dtype=dtype)


def _grads(logp, upstream, hidden, weight):
    wanted = [hidden] + ([weight] if weight.requires_grad else [])
    return torch.autograd.grad((logp * upstream).sum(), wanted)


def test_hand_value_one_row_with_temperature():
    # hidden [1, 0] picks column 0 of weight: logits [0, ln 2, ln 5]
    hidden = torch.tensor([[1.0, 0.0]])
    weight = torch.tensor([[0.0, 1.0], [math.log(2), 1.0], [math.log(5), 1.0]])
    logp, ent = fused_token_logprobs(hidden, weight, torch.tensor([2]), entropy=True)
    p = [1 / 8, 2 / 8, 5 / 8]        # softmax([0, ln 2, ln 5])
    torch.testing.assert_close(logp, torch.tensor([math.log(5 / 8)]))
    torch.testing.assert_close(ent, torch.tensor([-sum(q * math.log(q) for q in p)]))
    # T = 0.5 doubles the logits: softmax ∝ [1, 4, 25]
    logp, ent = fused_token_logprobs(hidden, weight, torch.tensor([1]), temperature=0.5, entropy=True)
    p = [1 / 30, 4 / 30, 25 / 30]
    torch.testing.assert_close(logp, torch.tensor([math.log(4 / 30)]))
    torch.testing.assert_close(ent, torch.tensor([-sum(q * math.log(q) for q in p)]))


@pytest.mark.parametrize("chunk_size", [None, 1, 5, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("weight_grad", [True, False])
def test_logprobs_entropy_and_grads_match_log_softmax(chunk_size, temperature, weight_grad):
    hidden, weight, targets, upstream = _random_case(weight_grad=weight_grad)
    logp, ent = fused_token_logprobs(hidden, weight, targets, chunk_size, temperature, entropy=True)
    ref_logp, ref_ent = plain_logprobs_and_entropy(hidden, weight, targets, temperature)
    assert logp.dtype == ent.dtype == torch.float32 and not ent.requires_grad
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    assert (logp[targets == -100] == 0).all() and (ent[targets == -100] == 0).all()
    ours, ref = _grads(logp, upstream, hidden, weight), _grads(ref_logp, upstream, hidden, weight)
    assert len(ours) == (2 if weight_grad else 1)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    hidden, weight, targets, _ = _random_case(seed=1, dtype=torch.float64)
    hidden = hidden[:2, :4, :5].detach().requires_grad_(True)
    weight = weight[:9, :5].detach().requires_grad_(True)
    targets = targets[:2, :4].clamp(max=8)
    targets[1, 0] = -100
    assert torch.autograd.gradcheck(lambda h, w: fused_token_logprobs(h, w, targets, 3, 0.7), (hidden, weight))
    logp = fused_token_logprobs(hidden, weight, targets, 3, 0.7)
    assert logp.dtype == torch.float64


def test_without_grad_equals_with_grad_and_all_ignored_rows_are_zero():
    hidden, weight, targets, _ = _random_case()
    with torch.no_grad():
        logp, ent = fused_token_logprobs(hidden, weight, targets, 4, 0.7, entropy=True)
    logp_g, ent_g = fused_token_logprobs(hidden, weight, targets, 4, 0.7, entropy=True)
    torch.testing.assert_close(logp, logp_g.detach(), atol=0, rtol=0)
    torch.testing.assert_close(ent, ent_g, atol=0, rtol=0)
    none = fused_token_logprobs(hidden, weight, torch.full_like(targets, -100), 4)
    none.sum().backward()
    assert none.abs().sum() == 0 and hidden.grad.abs().sum() == 0 and weight.grad.abs().sum() == 0


def test_tied_embedding_gets_both_gradients():
    torch.manual_seed(0)
    ids = torch.randint(0, 30, (3, 9))
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = -100
    upstream = torch.randn(3, 9)
    results = []
    for fused in (True, False):
        torch.manual_seed(1)
        emb, proj = torch.nn.Embedding(30, 8), torch.nn.Linear(8, 8)
        hidden = torch.tanh(proj(emb(ids)))
        if fused:
            logp = fused_token_logprobs(hidden, emb.weight, targets, chunk_size=4, temperature=0.9)
        else:
            logp = plain_logprobs_and_entropy(hidden, emb.weight, targets, 0.9)[0]
        (logp * upstream).sum().backward()
        results.append((logp.detach(), emb.weight.grad, proj.weight.grad))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_bf16_inputs_give_fp32_logprobs_of_the_bf16_logits():
    hidden, weight, targets, _ = _random_case()
    hidden, weight = hidden.detach().bfloat16(), weight.detach().bfloat16()
    logp = fused_token_logprobs(hidden, weight, targets, chunk_size=4)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, plain_logprobs_and_entropy(hidden, weight, targets)[0])


def test_weight_grad_under_autocast_recomputes_the_forward_logits():
    # large logits: if backward recomputed z in fp32 while the forward's lse came from bf16 logits,
    # the softmax would be off by far more than bf16 rounding
    hidden, weight, targets, upstream = _random_case()
    hidden = (hidden.detach() * 4).requires_grad_(True)
    grads = []
    for fused in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp = (fused_token_logprobs(hidden, weight, targets, 4) if fused
                    else plain_logprobs_and_entropy(hidden, weight, targets)[0])
        torch.testing.assert_close(logp, plain_logprobs_and_entropy(hidden.bfloat16(), weight.bfloat16(), targets)[0])
        grads.append(_grads(logp, upstream, hidden, weight))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, atol=0.05, rtol=0.02)


def test_never_builds_full_logits():
    torch.manual_seed(0)
    n, vocab, width, chunk = 256, 4096, 16, 32
    hidden = torch.randn(n, width, requires_grad=True)
    weight = torch.randn(vocab, width, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    upstream = torch.randn(n)
    with LargestTensor() as fused:
        logp, _ = fused_token_logprobs(hidden, weight, targets, chunk, 0.7, entropy=True)
        (logp * upstream).sum().backward()
    with LargestTensor() as plain:
        logp, _ = plain_logprobs_and_entropy(hidden, weight, targets, 0.7)
        (logp * upstream).sum().backward()
    assert plain.largest >= n * vocab
    assert fused.largest <= chunk * vocab   # one chunk of logits at a time, 8x smaller here
