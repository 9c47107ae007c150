"""Policy-gradient losses: the PPO clipped surrogate with the aggregations the field uses.

Per token, with ratio ρ = exp(log π - log π_old) and advantage A (per sequence or per token):
    ℓ_t = -min(ρ A, clip(ρ, 1 - ε_low, 1 + ε_high) A) + β KL_t
(PPO: Schulman et al. 2017; clip-higher ε_high > ε_low: DAPO, Yu et al. 2025; KL_t from
polm.losses.kl). The registered functions differ only in how ℓ is reduced, returned as
(loss SUM, count) so the shared loop divides by the count over the whole accumulated batch:
    grpo     per-sequence mean, then mean over sequences   (Shao et al. 2024)  count = sequences
    dapo     token-level mean over all tokens (also bnpo)  (Yu et al. 2025)    count = tokens
    dr_grpo  token sum / constant max_length, mean over sequences (Liu et al. 2025)  count = sequences
Every registered loss takes the same keyword parameters (ref_logprobs, beta, kl, clip_low, clip_high,
entropy, max_length), so a recipe calls any of them one way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from polm.errors import PolmError
from polm.losses.kl import KL_ESTIMATORS
from polm.ops import masked_mean, masked_sum
from polm.registry import Registry

POLICY_LOSSES = Registry("policy loss")


@dataclass
class PolicyLoss:
    loss_sum: torch.Tensor                  # scalar: ℓ reduced per the aggregation, SUMMED over `count` units
    count: int                              # units the loop divides by (sequences or tokens)
    metrics: dict[str, float] = field(default_factory=dict)


def _check(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> None:
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise PolmError(f"policy loss inputs disagree: logprobs {tuple(logprobs.shape)}, old_logprobs "
                        f"{tuple(old_logprobs.shape)}, mask {tuple(mask.shape)} (all must be [B,T])")
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise PolmError(f"advantages of shape {tuple(advantages.shape)} fit neither [B] nor [B,T] "
                        f"for logprobs {tuple(logprobs.shape)}")


def per_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                   mask: torch.Tensor, *, clip_low: float = 0.2, clip_high: float | None = None,
                   ref_logprobs: torch.Tensor | None = None, beta: float = 0.0, kl: str = "k3",
                   entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """ℓ_t [B,T] (unmasked) and per-token metrics (masked means) for logprobs/old/mask [B,T], A [B] or [B,T].

    Metrics: clip/low (ρ < 1-ε_low with A < 0), clip/high (ρ > 1+ε_high with A > 0), clip/region,
    ratio, kl (when β > 0), entropy (when given).
    """
    _check(logprobs, old_logprobs, advantages, mask)
    clip_high = clip_low if clip_high is None else clip_high
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    metrics: dict[str, float] = {}
    if beta != 0.0:
        if ref_logprobs is None:
            raise PolmError("beta > 0 needs reference logprobs", fix="Pass ref_logprobs, or set beta=0.")
        per_token_kl = KL_ESTIMATORS.get(kl)(logprobs, ref_logprobs)
        loss = loss + beta * per_token_kl
        metrics["kl"] = float(masked_mean(per_token_kl.detach(), mask))
    with torch.no_grad():
        low = (ratio < 1 - clip_low) & (adv < 0)
        high = (ratio > 1 + clip_high) & (adv > 0)
        metrics.update({"clip/low": float(masked_mean(low.float(), mask)),
                        "clip/high": float(masked_mean(high.float(), mask)),
                        "clip/region": float(masked_mean((low | high).float(), mask)),
                        "ratio": float(masked_mean(ratio, mask))})
        if entropy is not None:
            metrics["entropy"] = float(masked_mean(entropy, mask))
    return loss, metrics


@POLICY_LOSSES.register("grpo")
def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              ref_logprobs: torch.Tensor | None = None, beta: float = 0.0, kl: str = "k3", clip_low: float = 0.2,
              clip_high: float | None = None, entropy: torch.Tensor | None = None,
              max_length: int | None = None) -> PolicyLoss:
    """Σ_i (Σ_t m_it ℓ_it / Σ_t m_it), count = B: the mean over sequences of each sequence's token mean.

    `max_length` is unused: each sequence is normalised by its own token count.
    """
    loss, metrics = per_token_loss(logprobs, old_logprobs, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                                   ref_logprobs=ref_logprobs, beta=beta, kl=kl, entropy=entropy)
    return PolicyLoss(masked_mean(loss, mask, dim=1).sum(), logprobs.shape[0], metrics)


@POLICY_LOSSES.register("dapo")
@POLICY_LOSSES.register("bnpo")
def dapo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              ref_logprobs: torch.Tensor | None = None, beta: float = 0.0, kl: str = "k3", clip_low: float = 0.2,
              clip_high: float | None = None, entropy: torch.Tensor | None = None,
              max_length: int | None = None) -> PolicyLoss:
    """Σ_it m_it ℓ_it, count = Σ m: token-level mean, so long answers weigh by their length.

    The loop divides by the tokens of the whole accumulated batch, which is DAPO's normaliser and
    TRL's `bnpo` for one micro-batch; both names map here. `max_length` is unused: the normaliser
    is the number of tokens.
    """
    loss, metrics = per_token_loss(logprobs, old_logprobs, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                                   ref_logprobs=ref_logprobs, beta=beta, kl=kl, entropy=entropy)
    return PolicyLoss(masked_sum(loss, mask), int(mask.bool().sum()), metrics)


@POLICY_LOSSES.register("dr_grpo")
def dr_grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                 ref_logprobs: torch.Tensor | None = None, beta: float = 0.0, kl: str = "k3", clip_low: float = 0.2,
                 clip_high: float | None = None, entropy: torch.Tensor | None = None,
                 max_length: int | None = None) -> PolicyLoss:
    """Σ_it m_it ℓ_it / L, count = B, with L = max_length (the generation budget; default T).

    A constant normaliser removes GRPO's length bias (short wrong answers punished harder).
    """
    length = max_length or logprobs.shape[1]
    loss, metrics = per_token_loss(logprobs, old_logprobs, advantages, mask, clip_low=clip_low, clip_high=clip_high,
                                   ref_logprobs=ref_logprobs, beta=beta, kl=kl, entropy=entropy)
    return PolicyLoss(masked_sum(loss, mask) / length, logprobs.shape[0], metrics)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float = 0.2) -> PolicyLoss:
    """PPO value loss: ℓ_t = ½ max((V_t - R_t)², (V_old,t + clip(V_t - V_old,t, ±ε) - R_t)²).  [B,T] each.

    Returns the masked token SUM with count = tokens; clipping keeps the value model near the one
    that produced the advantages (Schulman et al. 2017; as in OpenAI's baselines / TRL PPO).
    """
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    with torch.no_grad():
        frac = masked_mean(((values - returns) ** 2 < (clipped - returns) ** 2).float(), mask)
    return PolicyLoss(masked_sum(loss, mask), int(mask.bool().sum()), {"value/clip": float(frac)})
