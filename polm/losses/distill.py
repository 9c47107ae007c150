"""Knowledge-distillation losses as pure per-token functions of student and teacher distributions:
forward / reverse KL, generalized JSD, total variation, top-k sparse KL, hidden-state MSE / cosine.

Every divergence takes rows of log-probabilities at the distillation temperature τ and returns one
value per row (a target token): student_logps [c,V] = log softmax(z_s / τ), and the teacher either as
teacher_logps [c,V] (`teacher="logits"`) or as its top-k (ids [c,k], log-probs [c,k]; `teacher="topk"`).
`polm.ops.divergence.chunked_rows_loss` feeds them `c` rows at a time, so no [N,V] tensor of either
model exists. `distill_token_loss` adds the temperature and the optional hard-label CE mix.
Conventions (S = student, T = teacher): forward KL = KL(T‖S) (mean-seeking, Hinton et al. 2015),
reverse KL = KL(S‖T) (mode-seeking, MiniLLM, Gu et al. 2024). No τ² factor is applied (as TRL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polm.registry import Registry

# teacher: what the divergence reads of the teacher — "logits" (its full log-probs) or "topk" (ids, log-probs)
DISTILL_LOSSES = Registry("distillation loss", {"teacher": "logits"})
HIDDEN_LOSSES = Registry("hidden-state loss")


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ_v p_v (log p_v - log q_v) per row, from log-probs [c,V] -> [c]."""
    return F.kl_div(logq, logp, reduction="none", log_target=True).sum(-1)


@DISTILL_LOSSES.register("forward_kl")
def forward_kl(student_logps: torch.Tensor, teacher_logps: torch.Tensor) -> torch.Tensor:
    """KL(T‖S) = Σ_v p_T(v) (log p_T(v) - log p_S(v)).  [c,V], [c,V] -> [c]."""
    return _kl(teacher_logps, student_logps)


@DISTILL_LOSSES.register("reverse_kl")
def reverse_kl(student_logps: torch.Tensor, teacher_logps: torch.Tensor) -> torch.Tensor:
    """KL(S‖T) = Σ_v p_S(v) (log p_S(v) - log p_T(v)).  [c,V], [c,V] -> [c]."""
    return _kl(student_logps, teacher_logps)


@DISTILL_LOSSES.register("jsd")
def generalized_jsd(student_logps: torch.Tensor, teacher_logps: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalized JSD of GKD (Agarwal et al. 2024, eq. 1), exactly as TRL's `GKDTrainer.generalized_jsd_loss`.

    For 0 < β < 1, with the mixture M = β p_T + (1-β) p_S:  JSD_β = β KL(T‖M) + (1-β) KL(S‖M), which
    tends to 0 at both ends (≈ β KL(T‖S) for small β). The endpoints are special-cased as in TRL:
    β = 0 is forward KL(T‖S), β = 1 is reverse KL(S‖T) (not the limits, which are 0).  [c,V] -> [c].
    """
    if beta == 0:
        return forward_kl(student_logps, teacher_logps)
    if beta == 1:
        return reverse_kl(student_logps, teacher_logps)
    b = torch.tensor(beta, dtype=student_logps.dtype, device=student_logps.device)
    mixture = torch.logsumexp(torch.stack([student_logps + torch.log1p(-b), teacher_logps + torch.log(b)]), dim=0)
    return beta * _kl(teacher_logps, mixture) + (1 - beta) * _kl(student_logps, mixture)


@DISTILL_LOSSES.register("tv")
def total_variation(student_logps: torch.Tensor, teacher_logps: torch.Tensor) -> torch.Tensor:
    """TV(S, T) = ½ Σ_v |p_S(v) - p_T(v)|, in [0, 1].  [c,V], [c,V] -> [c]."""
    return 0.5 * (student_logps.exp() - teacher_logps.exp()).abs().sum(-1)


@DISTILL_LOSSES.register("topk_kl", teacher="topk")
def topk_kl(student_logps: torch.Tensor, topk_ids: torch.Tensor, topk_logps: torch.Tensor) -> torch.Tensor:
    """Forward KL(T‖S) over the teacher's top-k tokens plus ONE bucket for the rest of the vocabulary.

    With K the teacher's top-k ids, P = Σ_{v∈K} p_T(v) and Q = Σ_{v∈K} p_S(v):
        Σ_{v∈K} p_T(v) (log p_T(v) - log p_S(v))  +  (1-P) (log(1-P) - log(1-Q)).
    That is the exact KL between the two distributions coarsened to k+1 outcomes (so 0 <= it <= the full
    KL, with equality when T's tail is proportional to S's); the tail is neither dropped nor renormalised
    away, so the student is also pushed to give the tail the teacher's mass. 0·log 0 = 0 when P = 1;
    log(1-Q) is floored at -100.
    student_logps [c,V], topk_ids [c,k] (long), topk_logps [c,k] (teacher log-probs at τ) -> [c].
    """
    ids = topk_ids.long()
    s_top = student_logps.gather(-1, ids)
    head = (topk_logps.exp() * (topk_logps - s_top)).sum(-1)
    t_tail = torch.log1p(-topk_logps.exp().sum(-1).clamp(max=1.0))                 # log(1-P)
    # log(1-Q) as a logsumexp over the tail itself: exact even when Q rounds to 1 (floored at e^-100)
    s_tail = student_logps.scatter(-1, ids, float("-inf")).logsumexp(-1).clamp(min=-100.0)
    p_tail = t_tail.exp()
    tail = torch.where(p_tail > 0, p_tail * (t_tail - s_tail), torch.zeros_like(p_tail))
    return head + tail


def distill_token_loss(student_logits: torch.Tensor, targets: torch.Tensor, teacher: tuple[torch.Tensor, ...],
                       divergence, *, temperature: float = 1.0, ce_weight: float = 0.0,
                       options: dict | None = None) -> torch.Tensor:
    """Per target token: (1-α) D(log softmax(z_s / τ), teacher) + α CE(z_s, target), α = `ce_weight`.

    student_logits [c,V] (raw), targets [c] (the data tokens), `teacher` the divergence's teacher tensors
    for these rows (already at τ), `divergence` a DISTILL_LOSSES function. The hard-label CE is at τ = 1.
    """
    z = student_logits.float() if student_logits.dtype in (torch.float16, torch.bfloat16) else student_logits
    loss = divergence(torch.log_softmax(z / temperature, dim=-1), *teacher, **(options or {}))
    if ce_weight:
        ce = -torch.log_softmax(z, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
        loss = (1 - ce_weight) * loss + ce_weight * ce
    return loss


@HIDDEN_LOSSES.register("mse")
def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean over the hidden size of (h_S - h_T)² per token (same-width pairs).  [N,H], [N,H] -> [N]."""
    return (student_hidden - teacher_hidden).pow(2).mean(-1)


@HIDDEN_LOSSES.register("cosine")
def hidden_cosine(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """1 - cos(h_S, h_T) per token, in [0, 2].  [N,H], [N,H] -> [N]."""
    return 1 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)
