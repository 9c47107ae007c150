"""A resumable stream of training micro-batches made from rollouts: a BatchSource for the shared loop.

The loop pulls micro-batches with `next()`; when the current rollout batch is used up, the stream
takes the next `prompts_per_rollout` prompts (a seeded, resumable BatchStream over the prompts),
calls `make_rollout` (generate, score, advantages) and serves the result `epochs` times (μ), in a
fresh seeded order each epoch. Its state (prompt position, rollout counter, the unused part of the
current rollout) goes into every checkpoint, so a resumed run continues on exactly the same data.
The rollout's metrics and the generation time reach the loop through `step_metrics()`, not the batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from polm.errors import PolmError
from polm.train.batches import BatchStream

# make_rollout(prompt records, rollout index) -> (examples, metrics)
MakeRollout = Callable[[list[dict], int], tuple[list[dict], dict[str, float]]]


def check_rollout_shape(prompts_per_rollout: int, group_size: int, micro_batch_size: int, grad_accum: int) -> int:
    """The rollout size P × G, which must be whole optimizer steps of micro_batch_size × grad_accum
    (so generation always starts a step and its time is logged with that step)."""
    rollout_size = prompts_per_rollout * group_size
    if rollout_size < 1 or rollout_size % (micro_batch_size * grad_accum):
        raise PolmError(
            f"a rollout of {prompts_per_rollout} prompts × {group_size} completions = {rollout_size} does not "
            f"split into optimizer steps of {micro_batch_size} × {grad_accum} (micro_batch_size × grad_accum)",
            where="rollout.prompts_per_rollout / train.micro_batch_size / train.grad_accum",
            fix="Make prompts_per_rollout × group_size a multiple of micro_batch_size × grad_accum.")
    return rollout_size


class RolloutStream:
    """A BatchSource of rollout micro-batches; `step_metrics()` gives the current rollout's metrics
    plus `time/generation_s`, the seconds spent in `make_rollout` since the previous call."""

    def __init__(self, prompts: list[dict], make_rollout: MakeRollout, collate: Callable[[list[dict]], dict], *,
                 prompts_per_rollout: int, group_size: int, epochs: int, micro_batch_size: int, grad_accum: int,
                 seed: int):
        rollout_size = check_rollout_shape(prompts_per_rollout, group_size, micro_batch_size, grad_accum)
        if epochs < 1:
            raise PolmError(f"epochs per rollout must be at least 1, got {epochs}", where="epochs_per_rollout")
        self.prompts = BatchStream(prompts, list, prompts_per_rollout, seed=seed)
        self.make_rollout, self.collate = make_rollout, collate
        self.rollout_size, self.epochs, self.mb = rollout_size, epochs, micro_batch_size
        self.seed = seed
        self.index = 0                     # rollouts made so far
        self.examples: list[dict] = []     # the current rollout
        self.plan: list[list[int]] = []    # micro-batches (indices into examples) still to serve
        self.metrics: dict[str, float] = {}   # the current rollout's, from make_rollout
        self.pending_generation_s = 0.0    # make_rollout time not yet reported by step_metrics
        self.generation_s = 0.0            # wall time spent in make_rollout, in total (kept across resumes)
        self.session_generation_s = 0.0    # ... in this process only, to split this call's wall time

    def steps_per_epoch(self, grad_accum: int) -> int:
        """Optimizer steps for one pass over the prompts (each rollout used `epochs` times)."""
        rollouts = math.ceil(len(self.prompts.examples) / self.prompts.micro_batch_size)
        return rollouts * self.epochs * self.rollout_size // (self.mb * grad_accum)

    def _refill(self) -> None:
        started = time.perf_counter()
        self.examples, self.metrics = self.make_rollout(next(self.prompts), self.index)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.index)
        self.plan = []
        for _ in range(self.epochs):   # μ passes, each in its own order
            order = torch.randperm(len(self.examples), generator=gen).tolist()
            self.plan += [order[i:i + self.mb] for i in range(0, len(order), self.mb)]
        self.index += 1
        seconds = time.perf_counter() - started
        self.generation_s += seconds
        self.session_generation_s += seconds
        self.pending_generation_s += seconds

    def __iter__(self) -> RolloutStream:
        return self

    def __next__(self) -> dict:
        if not self.plan:
            self._refill()
        picked = self.plan.pop(0)
        return self.collate([self.examples[i] for i in picked])

    def step_metrics(self) -> dict[str, float]:
        """The current rollout's metrics and `time/generation_s` (generation since the last call, then
        reset). Rollouts fill whole optimizer steps, so each step trains on one rollout."""
        metrics = {**self.metrics, "time/generation_s": self.pending_generation_s}
        self.pending_generation_s = 0.0
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: the prompt position, counters, and the rest of the current rollout (floats round-trip
        exactly). Taken between optimizer steps, after step_metrics, so no generation time is pending."""
        return {"prompts": self.prompts.state_dict(), "index": self.index, "examples": self.examples,
                "plan": self.plan, "metrics": self.metrics, "generation_s": self.generation_s,
                "size": len(self.prompts.examples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prompts.load_state_dict(state["prompts"])
        self.index, self.examples, self.plan = state["index"], state["examples"], state["plan"]
        self.metrics, self.generation_s = state["metrics"], state["generation_s"]
        self.pending_generation_s = 0.0
