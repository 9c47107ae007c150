"""Held-out evaluation with a recipe's own step function: the loss and metrics on an eval set."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from polm.train.loop import StepOutput


def make_heldout_eval(step_fn: Callable[[dict], StepOutput], examples: list, collate: Callable[[list], dict],
                      batch_size: int, device: torch.device) -> Callable[[], dict[str, float]]:
    """A no-grad pass of `step_fn` over `examples`: loss = Σ loss_sum / Σ count (the same unit as training:
    tokens for SFT, pairs for DPO) and every step metric averaged with weight `count`. `ppl` is added when
    the unit is tokens, i.e. the loss is a token cross-entropy; recipes drop what does not apply."""

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        totals: dict[str, float] = {"loss": 0.0}
        count = 0
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size])
            out = step_fn({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            count += int(out.count)
            totals["loss"] += float(out.loss_sum)
            for key, value in out.metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value) * int(out.count)
        return {k: v / max(count, 1) for k, v in totals.items()}

    return evaluate


def with_perplexity(evaluate: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
    """Add ppl = exp(mean token cross-entropy) to a token-level held-out eval."""

    def run() -> dict[str, float]:
        out = evaluate()
        return {**out, "ppl": math.exp(min(out["loss"], 50.0))}

    return run
