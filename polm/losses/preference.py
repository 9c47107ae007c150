"""Preference losses as pure functions of sequence log-probabilities: the DPO family, KTO, ORPO,
SimPO, CPO, and the Bradley–Terry reward-model loss.

Each loss returns `PreferenceLoss(losses [B], metrics)`: one loss per pair (per example for KTO), to
be SUMMED by the recipe and divided by the number of pairs by the shared loop, and the batch means
of what users read: `rewards/chosen`, `rewards/rejected`, `margins`, `accuracy`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from polm.registry import Registry

# needs_reference: the loss reads ref log-probs (the recipe keeps a reference); unpaired: KTO-style data
PREFERENCE_LOSSES = Registry("preference loss", {"needs_reference": True, "unpaired": False})
REWARD_MODEL_LOSSES = Registry("reward-model loss")


@dataclass
class PairLogps:
    """Sequence log-probabilities of a batch of B preference pairs (completion tokens only).

    chosen/rejected: Σ_t log πθ(y_t | x, y_<t) over the completion, [B]. *_tokens: completion
    lengths [B] (for length-normalised losses). ref_*: the same under the reference model, or None
    for reference-free losses.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None

    def logratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log πθ/πref of chosen, of rejected), each [B]."""
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError("this loss needs reference log-probabilities (ref_chosen, ref_rejected)")
        return self.chosen - self.ref_chosen, self.rejected - self.ref_rejected

    def mean_per_token(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Length-normalised policy log-probs (Σ log π / |y|) of chosen and rejected, each [B]."""
        return self.chosen / self.chosen_tokens.clamp(min=1), self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass
class UnpairedLogps:
    """A batch of B single completions for KTO, each labelled desirable or not.

    policy/ref: Σ log π over each completion [B]; desirable: bool [B]; kl_policy/kl_ref: the same
    for mismatched (prompt, completion) pairs of the batch [B], the estimate of KL(πθ‖πref), or None.
    """

    policy: torch.Tensor
    ref: torch.Tensor
    desirable: torch.Tensor
    kl_policy: torch.Tensor | None = None
    kl_ref: torch.Tensor | None = None


class PreferenceLoss(NamedTuple):
    losses: torch.Tensor                  # [B], one per pair (per example for KTO)
    metrics: dict[str, torch.Tensor]      # detached scalars: batch means


def preference_loss(name: str, *, reference: bool, unpaired: bool = False) -> Callable[[Callable], Callable]:
    """Register a loss under `name`; `reference` says whether it needs reference log-probs, `unpaired`
    whether it takes `UnpairedLogps` (KTO). A plug-in module may use it too, or go undeclared
    (then it is a paired loss with a reference)."""
    return PREFERENCE_LOSSES.register(name, needs_reference=reference, unpaired=unpaired)


def reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batch means of the implicit rewards r_w, r_l [B], their margin r_w - r_l and accuracy [r_w > r_l]."""
    chosen, rejected = chosen.detach(), rejected.detach()
    return {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "margins": (chosen - rejected).mean(), "accuracy": (chosen > rejected).float().mean()}


def _dpo_rewards(lp: PairLogps, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(β·Δ with Δ = log πθ/πref(y_w) - log πθ/πref(y_l), r_w = β·logratio_w, r_l = β·logratio_l)."""
    chosen, rejected = lp.logratios()
    return beta * (chosen - rejected), beta * chosen, beta * rejected


def _smoothed_sigmoid(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-(1-ε)·log σ(z) - ε·log σ(-z): the pair's label is flipped with probability ε."""
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


@preference_loss("dpo", reference=True)
def dpo(lp: PairLogps, *, beta: float = 0.1) -> PreferenceLoss:
    """DPO (Rafailov et al. 2023): ℓ = -log σ(β·Δ), Δ = log πθ/πref(y_w) - log πθ/πref(y_l)."""
    z, r_w, r_l = _dpo_rewards(lp, beta)
    return PreferenceLoss(-F.logsigmoid(z), reward_metrics(r_w, r_l))


@preference_loss("cdpo", reference=True)
def cdpo(lp: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.1) -> PreferenceLoss:
    """Conservative DPO (Mitchell 2023): ℓ = -(1-ε)·log σ(βΔ) - ε·log σ(-βΔ)."""
    z, r_w, r_l = _dpo_rewards(lp, beta)
    return PreferenceLoss(_smoothed_sigmoid(z, label_smoothing), reward_metrics(r_w, r_l))


@preference_loss("robust", reference=True)
def robust(lp: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.1) -> PreferenceLoss:
    """Robust DPO (Chowdhury et al. 2024), unbiased under label-flip rate ε < 1/2:
    ℓ = [-(1-ε)·log σ(βΔ) + ε·log σ(-βΔ)] / (1 - 2ε)."""
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    z, r_w, r_l = _dpo_rewards(lp, beta)
    losses = (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)
    return PreferenceLoss(losses, reward_metrics(r_w, r_l))


@preference_loss("hinge", reference=True)
def hinge(lp: PairLogps, *, beta: float = 0.1) -> PreferenceLoss:
    """SLiC-style hinge (Zhao et al. 2023) on the DPO margin: ℓ = max(0, 1 - βΔ)."""
    z, r_w, r_l = _dpo_rewards(lp, beta)
    return PreferenceLoss(torch.relu(1 - z), reward_metrics(r_w, r_l))


@preference_loss("ipo", reference=True)
def ipo(lp: PairLogps, *, beta: float = 0.1) -> PreferenceLoss:
    """IPO (Azar et al. 2023, eq. 17) on per-token log-ratios (as TRL, confirmed with the authors):
    ℓ = (logratio_w/|y_w| - logratio_l/|y_l| - 1/(2β))²."""
    chosen, rejected = lp.logratios()
    delta = chosen / lp.chosen_tokens.clamp(min=1) - rejected / lp.rejected_tokens.clamp(min=1)
    return PreferenceLoss((delta - 1 / (2 * beta)) ** 2, reward_metrics(beta * chosen, beta * rejected))


def _nll_per_token(lp: PairLogps) -> torch.Tensor:
    """SFT term on the chosen completion: -Σ log πθ(y_w) / |y_w|, [B]."""
    return -lp.chosen / lp.chosen_tokens.clamp(min=1)


@preference_loss("cpo", reference=False)
def cpo(lp: PairLogps, *, beta: float = 0.1, label_smoothing: float = 0.0, sft_weight: float = 1.0) -> PreferenceLoss:
    """CPO (Xu et al. 2024, eq. 3): ℓ = -log σ(β·(log πθ(y_w) - log πθ(y_l))) + α·NLL(y_w), no reference.
    NLL(y_w) is the chosen completion's mean token cross-entropy; α = sft_weight."""
    z = beta * (lp.chosen - lp.rejected)
    losses = _smoothed_sigmoid(z, label_smoothing) + sft_weight * _nll_per_token(lp)
    return PreferenceLoss(losses, reward_metrics(beta * lp.chosen, beta * lp.rejected))


@preference_loss("simpo", reference=False)
def simpo(lp: PairLogps, *, beta: float = 2.0, gamma: float = 1.0, label_smoothing: float = 0.0,
          sft_weight: float = 0.0) -> PreferenceLoss:
    """SimPO (Meng et al. 2024, eq. 6): ℓ = -log σ(β·(ā_w - ā_l) - γ), ā = Σ log πθ(y) / |y|, no reference.
    γ is the target reward margin; sft_weight adds α·NLL(y_w) (CPO-SimPO)."""
    avg_w, avg_l = lp.mean_per_token()
    losses = _smoothed_sigmoid(beta * (avg_w - avg_l) - gamma, label_smoothing) + sft_weight * _nll_per_token(lp)
    return PreferenceLoss(losses, reward_metrics(beta * avg_w, beta * avg_l))


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation (Mächler 2012: switch at -log 2)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@preference_loss("orpo", reference=False)
def orpo(lp: PairLogps, *, beta: float = 0.1, sft_weight: float = 1.0) -> PreferenceLoss:
    """ORPO (Hong et al. 2024, eqs. 4–7): ℓ = NLL(y_w) - β·log σ(log odds(y_w) - log odds(y_l)),
    odds(y) = p/(1-p) with p = exp(ā), ā = mean token log-prob of y; no reference model."""
    # at least fp32: log1mexp near 0 cancels badly in bf16
    avg_w, avg_l = (t.to(torch.promote_types(t.dtype, torch.float32)) for t in lp.mean_per_token())
    log_odds = (avg_w - avg_l) - (log1mexp(avg_w) - log1mexp(avg_l))
    losses = sft_weight * -avg_w - beta * F.logsigmoid(log_odds)
    metrics = reward_metrics(beta * avg_w, beta * avg_l)
    metrics["log_odds_ratio"] = log_odds.detach().mean()
    return PreferenceLoss(losses, metrics)


@preference_loss("kto", reference=True, unpaired=True)
def kto(lp: UnpairedLogps, *, beta: float = 0.1, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> PreferenceLoss:
    """KTO (Ethayarajh et al. 2024): with r = log πθ/πref(y|x) and z₀ = max(0, mean(KL samples)) (no grad),
    ℓ = λ_D·(1 - σ(β(r - z₀))) for desirable y, λ_U·(1 - σ(β(z₀ - r))) for undesirable y."""
    ratio = lp.policy - lp.ref
    if lp.kl_policy is not None and lp.kl_ref is not None:
        z0 = (lp.kl_policy - lp.kl_ref).mean().detach().clamp(min=0)
    else:
        z0 = torch.zeros((), dtype=ratio.dtype, device=ratio.device)
    good = lp.desirable.bool()
    losses = torch.where(good, desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio))))
    return PreferenceLoss(losses, _kto_metrics(beta * ratio.detach(), good, z0))


def _kto_metrics(rewards: torch.Tensor, good: torch.Tensor, z0: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean reward of desirable and of undesirable examples (when present), their margin, z₀, and
    accuracy = share of examples on the right side of z₀ (desirable above, undesirable below)."""
    metrics = {"kl": z0, "accuracy": torch.where(good, rewards > z0, rewards < z0).float().mean()}
    if good.any():
        metrics["rewards/chosen"] = rewards[good].mean()
    if (~good).any():
        metrics["rewards/rejected"] = rewards[~good].mean()
    if good.any() and (~good).any():
        metrics["margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return metrics


@REWARD_MODEL_LOSSES.register("bradley_terry")
def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: torch.Tensor | float | None = None,
                  center_coefficient: float = 0.0) -> PreferenceLoss:
    """Bradley–Terry reward-model loss (Ouyang et al. 2022; margin: Touvron et al. 2023):
    ℓ = -log σ(r_w - r_l - m) + c·(r_w + r_l)², on scalar scores r [B]; m = 0 without a margin."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_coefficient:
        losses = losses + center_coefficient * (chosen + rejected) ** 2
    return PreferenceLoss(losses, reward_metrics(chosen, rejected))
