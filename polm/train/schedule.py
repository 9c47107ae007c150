"""Learning-rate schedules: pure multiplier functions of the step, wrapped in a LambdaLR.

Same conventions as transformers' `get_*_schedule_with_warmup`: linear warmup from 0, then decay of
the multiplier from 1 to `min_lr_ratio` over the remaining steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from polm.train.config import TrainConfig


def warmup_steps_for(cfg: TrainConfig, total_steps: int) -> int:
    """`warmup_steps`, or ceil(warmup_ratio × total_steps) when it is 0."""
    return cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(cfg.warmup_ratio * total_steps)


def _decay_progress(step: int, total_steps: int, warmup_steps: int) -> float:
    return min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))


def constant_multiplier(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """step/warmup during warmup, then 1."""
    return step / warmup_steps if step < warmup_steps else 1.0


def linear_multiplier(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Warmup, then m + (1 - m)(1 - p) with p = (step - warmup)/(total - warmup), m = min_lr_ratio."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = _decay_progress(step, total_steps, warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress)


def cosine_multiplier(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Warmup, then m + (1 - m) · ½(1 + cos(π p)) with p as in `linear_multiplier`."""
    if step < warmup_steps:
        return step / warmup_steps
    progress = _decay_progress(step, total_steps, warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES: dict[str, Callable[[int, int, int, float], float]] = {
    "constant": constant_multiplier,
    "linear": linear_multiplier,
    "cosine": cosine_multiplier,
}


def build_scheduler(optimizer: Optimizer, cfg: TrainConfig, total_steps: int) -> LambdaLR:
    """LambdaLR whose lr at optimizer step k (0-based) is cfg.lr × multiplier(k)."""
    fn = SCHEDULES[cfg.schedule]
    warmup = warmup_steps_for(cfg, total_steps)

    def multiplier(step: int) -> float:
        return fn(step, total_steps, warmup, cfg.min_lr_ratio)

    return LambdaLR(optimizer, multiplier)
