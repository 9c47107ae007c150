"""Per-token KL estimators between the policy π and a reference π_ref, from sampled-token logprobs.

With tokens sampled from π and log-ratio d = log π_ref(y) - log π(y) (Schulman 2020, "Approximating
KL Divergence"): k1 = -d (unbiased, high variance, can be negative), k2 = d² / 2, and
k3 = exp(d) - d - 1 (unbiased, always >= 0; the GRPO / TRL choice). `none` is 0.
"""

from __future__ import annotations

import torch

from polm.registry import Registry

KL_ESTIMATORS = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log π - log π_ref.  [B,T] -> [B,T]."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = (log π - log π_ref)² / 2.  [B,T] -> [B,T]."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(d) - d - 1 with d = log π_ref - log π.  [B,T] -> [B,T]."""
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


@KL_ESTIMATORS.register("none")
def kl_none(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """No KL penalty: zeros.  [B,T] -> [B,T]."""
    return torch.zeros_like(logprobs)
