"""The Generator protocol every rollout backend implements, and what a rollout returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from polm.errors import PolmError


@dataclass
class SamplingConfig:
    n: int = 8                        # completions per prompt (the GRPO group size)
    max_new_tokens: int = 128
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0 = no top-k filter
    stop: list[str] = field(default_factory=list)   # generation of a completion ends at the first of these

    def validate(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise PolmError(f"rollout needs n >= 1 and max_new_tokens >= 1, got n={self.n}, "
                            f"max_new_tokens={self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise PolmError(f"invalid sampling settings: temperature={self.temperature} (>= 0), "
                            f"top_p={self.top_p} (in (0, 1]), top_k={self.top_k} (>= 0)")


@dataclass
class Completion:
    prompt_index: int                 # which prompt of the request this completes
    token_ids: list[int]              # generated tokens, including the end-of-sequence token when one ended it
    logprobs: list[float]             # log p(token) under the sampling policy at `temperature` (before top-p/k)
    text: str                         # decoded, special tokens dropped, cut before a stop string
    finish_reason: Literal["stop", "length"]


class Generator(Protocol):
    """A rollout backend: n sampled completions per tokenized prompt, with their sampling logprobs."""

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int) -> list[Completion]:
        """`sampling.n` completions per prompt, grouped: completions[i * n + j] is sample j of prompt i.
        The same seed, prompts and weights give the same completions."""
        ...

    def sync_weights(self) -> None:
        """Make the backend sample from the policy's current weights (a no-op when it shares them)."""
        ...
