"""Advantage estimators for policy-gradient RL: pure tensor functions.

`ADVANTAGES` holds the group estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++), all called as
`fn(rewards [N], group_size) -> [N]` on the rewards of a rollout batch laid out group by group —
`rewards[g * G + i]` is completion i of prompt g. GAE is not one of them: `gae_advantages` is a plain
function of per-token rewards and a value model's values (PPO).
"""

from __future__ import annotations

import torch

from polm.errors import PolmError
from polm.registry import Registry

ADVANTAGES = Registry("advantage estimator")
STD_EPS = 1e-4  # as TRL / the GRPO reference code: avoids 0/0 for a group whose rewards all agree


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] -> [N / G, G], with a clear message when N is not a multiple of G."""
    if rewards.dim() != 1:
        raise PolmError(f"group advantages need a 1-D reward tensor, got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise PolmError(f"{rewards.numel()} rewards do not split into groups of {group_size}",
                        fix="Pass rewards group by group: prompts × group_size completions.")
    return rewards.view(-1, group_size)


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards: torch.Tensor, group_size: int, scale_std: bool = True) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): A_i = (r_i - mean_g r) / (std_g r + 1e-4).  [N] -> [N].

    std is the unbiased (Bessel-corrected) standard deviation within the group, as in TRL; a group
    of one has std 0. `scale_std=False` gives r_i - mean_g r (the Dr. GRPO estimator).
    """
    grouped = _groups(rewards, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if not scale_std:
        return centred.reshape(-1)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
    return (centred / (std + STD_EPS)).reshape(-1)


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_i = r_i - mean_g r.  [N] -> [N].

    Dividing by the group std favours questions that are too easy or too hard; Dr. GRPO drops it.
    """
    return grpo_advantages(rewards, group_size, scale_std=False)


@ADVANTAGES.register("rloo")
def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - (1 / (G-1)) Σ_{j≠i} r_j = G/(G-1) (r_i - mean_g r).  [N] -> [N].

    The leave-one-out baseline is independent of r_i, so the estimator is unbiased. Needs G >= 2.
    """
    grouped = _groups(rewards, group_size)
    if group_size < 2:
        raise PolmError("RLOO needs at least 2 completions per prompt", fix="Set rollout.group_size >= 2.")
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(-1)


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE++ with group baseline (Hu et al. 2025): a_i = r_i - mean_g r, then whitened over the
    whole batch: A_i = (a_i - mean(a)) / (std(a) + 1e-4).  [N] -> [N].

    Normalising by the batch (not group) std keeps the scale stable without per-prompt std bias.
    """
    centred = _groups(rewards, group_size)
    centred = (centred - centred.mean(dim=1, keepdim=True)).reshape(-1)
    std = centred.std() if centred.numel() > 1 else torch.zeros(())
    return (centred - centred.mean()) / (std + STD_EPS)


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016).  rewards, values, mask [B,T] -> (A, R) [B,T].

    δ_t = r_t + γ V_{t+1} - V_t and A_t = δ_t + γλ A_{t+1}, with V and A taken as 0 after the last
    valid token of a row; returns R_t = A_t + V_t are the value targets. Masked positions get 0.
    """
    if not rewards.shape == values.shape == mask.shape:
        raise PolmError(f"GAE needs rewards, values and mask of one shape, got {tuple(rewards.shape)}, "
                        f"{tuple(values.shape)}, {tuple(mask.shape)}")
    keep = mask.to(values.dtype)
    values = values * keep
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * keep[:, t]
        advantages[:, t] = adv
        # a padded position passes the future through unchanged, so right padding is harmless
        next_value = torch.where(keep[:, t] > 0, values[:, t], next_value)
        next_adv = torch.where(keep[:, t] > 0, adv, next_adv)
    return advantages, (advantages + values) * keep
