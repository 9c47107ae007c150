"""Distillation losses: closed forms by hand (β at and next to both endpoints), parity with TRL 1.16's
`GKDTrainer.generalized_jsd_loss` to 1e-6, gradients by gradcheck, top-k tail and hidden-state losses."""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import LargestTensor

from polm.losses.distill import DISTILL_LOSSES, HIDDEN_LOSSES, distill_token_loss, generalized_jsd, topk_kl
from polm.ops import IGNORE_INDEX
from polm.ops.divergence import chunked_rows_loss

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

T, S = (0.8, 0.2), (0.5, 0.5)      # teacher and student over a 2-token vocabulary


def logps(p) -> torch.Tensor:
    return torch.tensor([p], dtype=torch.float64).log()


def kl(p, q) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def jsd_by_hand(beta: float) -> float:
    m = [beta * t + (1 - beta) * s for t, s in zip(T, S)]
    return beta * kl(T, m) + (1 - beta) * kl(S, m)


def test_forward_reverse_and_tv_by_hand():
    fkl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)        # KL(T‖S) = 0.19274...
    rkl = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)        # KL(S‖T) = 0.22314...
    assert DISTILL_LOSSES.get("forward_kl")(logps(S), logps(T)).item() == pytest.approx(fkl, abs=1e-12)
    assert DISTILL_LOSSES.get("reverse_kl")(logps(S), logps(T)).item() == pytest.approx(rkl, abs=1e-12)
    assert fkl != pytest.approx(rkl, abs=1e-3)                          # a swap would be seen
    assert DISTILL_LOSSES.get("tv")(logps(S), logps(T)).item() == pytest.approx(0.3, abs=1e-12)


@pytest.mark.parametrize("beta", [0.0, 1e-3, 0.5, 1 - 1e-3, 1.0])
def test_generalized_jsd_closed_form(beta):
    got = generalized_jsd(logps(S), logps(T), beta=beta).item()
    if beta == 0:       # TRL's endpoint: forward KL(teacher‖student), not the limit 0
        expected = kl(T, S)
    elif beta == 1:     # ... and reverse KL(student‖teacher)
        expected = kl(S, T)
    else:
        expected = jsd_by_hand(beta)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_interior_jsd_tends_to_zero_at_both_ends_scaled_by_the_endpoint_kl():
    # JSD_β ≈ β KL(T‖S) for small β and ≈ (1-β) KL(S‖T) near 1: the interior is continuous, the endpoints are not
    near0 = generalized_jsd(logps(S), logps(T), beta=1e-3).item()
    near1 = generalized_jsd(logps(S), logps(T), beta=1 - 1e-3).item()
    assert near0 == pytest.approx(1e-3 * kl(T, S), rel=5e-3)
    assert near1 == pytest.approx(1e-3 * kl(S, T), rel=5e-3)


def test_topk_kl_by_hand_with_the_tail_as_one_bucket():
    t, s = (0.7, 0.2, 0.1), (0.4, 0.4, 0.2)
    ids, top = torch.tensor([[0]]), logps(t)[:, :1]
    expected = 0.7 * math.log(0.7 / 0.4) + 0.3 * math.log(0.3 / 0.6)       # head + (1-P) log((1-P)/(1-Q))
    assert topk_kl(logps(s), ids, top).item() == pytest.approx(expected, abs=1e-12)
    # the teacher's tail proportional to the student's: the bucketed KL IS the full KL
    s2 = (0.4, 0.4, 0.2)
    t2 = (0.7, 0.2, 0.1)
    assert t2[1] / t2[2] == s2[1] / s2[2]
    full = kl(t2, s2)
    assert topk_kl(logps(s2), ids, logps(t2)[:, :1]).item() == pytest.approx(full, abs=1e-12)
    # k = 2 of 3 tokens, in any order; all of the teacher's mass in the top-k: no tail term
    ids2 = torch.tensor([[1, 0]])
    two = 0.7 * math.log(0.7 / 0.4) + 0.2 * math.log(0.2 / 0.4) + 0.1 * math.log(0.1 / 0.2)
    assert topk_kl(logps(s), ids2, logps(t)[:, [1, 0]]).item() == pytest.approx(two, abs=1e-12)
    peaked = torch.tensor([[0.0]], dtype=torch.float64)                    # P = 1
    assert topk_kl(logps(s), ids, peaked).item() == pytest.approx(-math.log(0.4), abs=1e-12)


def test_hidden_state_losses_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert HIDDEN_LOSSES.get("mse")(a, b).tolist() == pytest.approx([1.0, 1.0])
    assert HIDDEN_LOSSES.get("cosine")(a, b).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_hard_label_ce_mix_and_temperature():
    z = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    teacher = (torch.log_softmax(torch.tensor([[0.0, 2.0]], dtype=torch.float64) / 2.0, -1),)
    fwd = DISTILL_LOSSES.get("forward_kl")
    d = fwd(torch.log_softmax(z / 2.0, -1), *teacher).item()
    ce = math.log(1 + math.exp(-2.0))                                      # -log softmax(z)[0], at τ = 1
    got = distill_token_loss(z, torch.tensor([0]), teacher, fwd, temperature=2.0, ce_weight=0.25).item()
    assert got == pytest.approx(0.75 * d + 0.25 * ce, abs=1e-12)
    p, q = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))                   # softmax([1, 0]), softmax([0, 1])
    assert d == pytest.approx(kl((q, p), (p, q)), abs=1e-12)


def trl_jsd(student, teacher, labels, beta):
    from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta, temperature=1.7)


@pytest.mark.parametrize("beta", [0.0, 1e-3, 0.5, 1 - 1e-3, 1.0])
def test_generalized_jsd_matches_trl(beta):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 11, generator=gen, dtype=torch.float64) * 2
    teacher = torch.randn(2, 5, 11, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, 11, (2, 5), generator=gen)
    labels[0, :2] = IGNORE_INDEX                                           # prompt tokens carry no loss
    labels[1, 4] = IGNORE_INDEX
    theirs = trl_jsd(student, teacher, labels, beta).item()
    keep = labels.reshape(-1) != IGNORE_INDEX
    z_s, z_t, targets = student.reshape(-1, 11)[keep], teacher.reshape(-1, 11)[keep], labels.reshape(-1)[keep]
    t_logps = torch.log_softmax(z_t / 1.7, -1)
    row = lambda z, i, j: distill_token_loss(z, targets[i:j], (t_logps[i:j],), generalized_jsd,  # noqa: E731
                                             temperature=1.7, options={"beta": beta})
    ours = (chunked_rows_loss(z_s, None, row, chunk_size=3) / keep.sum()).item()
    assert ours == pytest.approx(theirs, abs=1e-6, rel=1e-9)


def _case(V=13, H=6, K=7, seed=1):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(K, H, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, H, generator=gen, dtype=torch.float64, requires_grad=True)
    t_logps = torch.log_softmax(torch.randn(K, V, generator=gen, dtype=torch.float64), -1)
    targets = torch.randint(0, V, (K,), generator=gen)
    return h, w, t_logps, targets


def _teacher(name: str, t_logps: torch.Tensor, i: int, j: int) -> tuple:
    if DISTILL_LOSSES.meta(name)["teacher"] == "topk":
        top = t_logps[i:j].topk(4, dim=-1)
        return top.indices, top.values
    return (t_logps[i:j],)


OPTIONS = {"jsd": {"beta": 0.3}}


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "tv", "topk_kl"])
def test_gradcheck_through_the_chunked_loss(name):
    h, w, t_logps, targets = _case()
    fn = DISTILL_LOSSES.get(name)

    def loss(hidden, weight):
        row = lambda z, i, j: distill_token_loss(z, targets[i:j], _teacher(name, t_logps, i, j), fn,  # noqa: E731
                                                 temperature=1.5, ce_weight=0.2, options=OPTIONS.get(name))
        return chunked_rows_loss(hidden, weight, row, chunk_size=3)

    assert torch.autograd.gradcheck(loss, (h, w), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "tv", "topk_kl"])
def test_chunked_equals_unchunked_value_and_gradients(name):
    h, w, t_logps, targets = _case(K=9)
    fn = DISTILL_LOSSES.get(name)
    row = lambda z, i, j: distill_token_loss(z, targets[i:j], _teacher(name, t_logps, i, j), fn,  # noqa: E731
                                             temperature=0.7, options=OPTIONS.get(name))
    chunked = chunked_rows_loss(h, w, row, chunk_size=2)
    chunked.backward(torch.tensor(2.0, dtype=torch.float64))
    g_chunked = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    plain = row(h @ w.T, 0, 9).sum()                      # the [K,V] logits at once, plain autograd
    (2 * plain).backward()
    assert chunked.item() == pytest.approx(plain.item(), abs=1e-12)
    assert torch.allclose(g_chunked[0], h.grad, atol=1e-12) and torch.allclose(g_chunked[1], w.grad, atol=1e-12)


def test_chunked_loss_never_allocates_the_full_logits():
    K, V, H, chunk = 64, 512, 8, 8
    h = torch.randn(K, H, requires_grad=True)
    w = torch.randn(V, H)
    t_hidden, t_w = torch.randn(K, H), torch.randn(V, H)
    targets = torch.randint(0, V, (K,))

    def row(z, i, j):
        t = torch.log_softmax(t_hidden[i:j] @ t_w.T, -1)   # the teacher's chunk, made on demand
        return distill_token_loss(z, targets[i:j], (t,), generalized_jsd, options={"beta": 0.5})

    with LargestTensor() as probe:
        chunked_rows_loss(h, w, row, chunk_size=chunk).backward()
    assert probe.largest <= 2 * chunk * V < K * V         # the stacked mixture is 2 × [chunk, V]
