"""Tested tensor glue shared by every recipe: token logprobs, masked reductions, chunked CE."""

from polm.ops.logprobs import (
    IGNORE_INDEX,
    ModelLogprobs,
    causal_lm_loss,
    causal_targets,
    chunked_cross_entropy,
    fused_token_logprobs,
    masked_mean,
    masked_sum,
    model_logprobs,
    token_logprobs,
)

__all__ = [
    "IGNORE_INDEX",
    "ModelLogprobs",
    "causal_lm_loss",
    "causal_targets",
    "chunked_cross_entropy",
    "fused_token_logprobs",
    "masked_mean",
    "masked_sum",
    "model_logprobs",
    "token_logprobs",
]
