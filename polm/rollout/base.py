"""The one Generator protocol every generation backend implements (RL rollouts, eval, `polm generate`,
data builders), its one settings type (SamplingConfig), and what a generation returns (Completion)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from polm.errors import PolmError


@dataclass
class SamplingConfig:
    """What to sample, for every backend and caller. How prompts are batched, templated or reported
    is not sampling: that belongs to the backend's constructor or to `polm.rollout.text.generate_text`."""

    n: int = 8                        # completions per prompt (the GRPO group size)
    max_new_tokens: int = 128
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0 = no top-k filter
    stop: list[str] = field(default_factory=list)   # generation of a completion ends at the first of these
    min_new_tokens: int = 0           # end-of-sequence tokens and stop strings count only from this length on

    def validate(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1:
            raise PolmError(f"generation needs n >= 1 and max_new_tokens >= 1, got n={self.n}, "
                            f"max_new_tokens={self.max_new_tokens}", fix="Set both to at least 1.")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise PolmError(f"invalid sampling settings: temperature={self.temperature} (>= 0), "
                            f"top_p={self.top_p} (in (0, 1]), top_k={self.top_k} (>= 0)",
                            fix="Use temperature 0 for greedy decoding, top_p 1 and top_k 0 for no filter.")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise PolmError(f"min_new_tokens={self.min_new_tokens} must be in [0, max_new_tokens="
                            f"{self.max_new_tokens}]", fix="Lower min_new_tokens, or raise max_new_tokens.")


@dataclass
class Completion:
    prompt_index: int                 # which prompt of the request this completes
    token_ids: list[int]              # generated tokens, including the end-of-sequence token when one ended it
    logprobs: list[float]             # log p(token) under the sampling policy at `temperature` (before top-p/k)
    text: str                         # decoded, special tokens dropped, cut before a stop string
    finish_reason: Literal["stop", "length"]


class Generator(Protocol):
    """A generation backend: n completions per tokenized prompt, with their sampling logprobs."""

    def generate(self, prompt_ids: list[list[int]], sampling: SamplingConfig, seed: int,
                 on_progress: Callable[[int], None] | None = None) -> list[Completion]:
        """`sampling.n` completions per prompt, grouped: completions[i * n + j] is sample j of prompt i.
        The same seed, prompts and weights give the same completions. `on_progress(k)` is called when
        the first k prompts are done (for a progress bar; it never changes what is sampled)."""
        ...

    def sync_weights(self) -> None:
        """Make the backend sample from the policy's current weights (a no-op when it shares them)."""
        ...
