"""Learning-rate multipliers against hand values and transformers' schedules."""

from __future__ import annotations

import math

import pytest
import torch

from polm.train.config import TrainConfig
from polm.train.schedule import (
    build_scheduler,
    constant_multiplier,
    cosine_multiplier,
    linear_multiplier,
    warmup_steps_for,
)


def test_hand_values_total_10_warmup_2_floor_0_1():
    # warmup: step/2; decay progress p = (step - 2) / 8; floor m = 0.1
    for fn in (constant_multiplier, linear_multiplier, cosine_multiplier):
        assert fn(0, 10, 2, 0.1) == 0.0
        assert fn(1, 10, 2, 0.1) == 0.5
        assert fn(2, 10, 2, 0.1) == pytest.approx(1.0)
    assert constant_multiplier(7, 10, 2, 0.1) == 1.0
    assert linear_multiplier(4, 10, 2, 0.1) == pytest.approx(0.1 + 0.9 * 0.75)          # p = 1/4
    assert cosine_multiplier(4, 10, 2, 0.1) == pytest.approx(0.1 + 0.45 * (1 + math.sqrt(0.5)))
    assert cosine_multiplier(6, 10, 2, 0.1) == pytest.approx(0.55)                        # p = 1/2
    assert linear_multiplier(10, 10, 2, 0.1) == pytest.approx(0.1)
    assert cosine_multiplier(10, 10, 2, 0.1) == pytest.approx(0.1)
    assert cosine_multiplier(12, 10, 2, 0.1) == pytest.approx(0.1)                        # past the end: floor


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lambda_lr_matches_transformers(schedule):
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    peer_fn = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}[schedule]
    cfg = TrainConfig(lr=0.1, schedule=schedule, warmup_steps=3)
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    peer_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ours, peer = build_scheduler(ours_opt, cfg, total_steps=12), peer_fn(peer_opt, 3, 12)
    for _ in range(13):   # steps 0..12; past the end HF's cosine rises again, ours stays at the floor
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(peer_opt.param_groups[0]["lr"], abs=1e-12)
        ours_opt.step(), peer_opt.step()
        ours.step(), peer.step()


def test_warmup_ratio_rounds_up():
    assert warmup_steps_for(TrainConfig(warmup_ratio=0.1), 25) == 3   # ceil(2.5)
    assert warmup_steps_for(TrainConfig(warmup_steps=4, warmup_ratio=0.5), 25) == 4
