"""Per-group learning rates in the shared loop: train.lr × lr_scale, through the schedule and a resume."""

from __future__ import annotations

import pytest
import torch

from polm.train import TrainConfig
from polm.train.checkpoint import TrainState
from polm.train.loop import _rebase_lr, build_optimizer, param_groups
from polm.train.schedule import build_scheduler


def test_groups_run_at_scaled_rates_through_the_schedule_and_a_rebase():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=0.1, schedule="linear", weight_decay=0.5)
    opt = build_optimizer([{"params": list(a.parameters()), "lr_scale": 1.0},
                           {"params": list(b.parameters()), "lr_scale": 0.01}], cfg)
    # weights decay, biases do not; each component keeps its own rate
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        (0.1, 0.5), (0.1, 0.0), (pytest.approx(0.001), 0.5), (pytest.approx(0.001), 0.0)]
    sched = build_scheduler(opt, cfg, total_steps=4)
    opt.step()
    sched.step()                                   # linear decay: step 1 of 4 -> 0.75
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.075, 0.075, 0.00075, 0.00075])
    _rebase_lr(TrainState({}, opt, sched, batches=None), 0.2)   # a resume with train.lr=0.2
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.15, 0.15, 0.0015, 0.0015])


def test_a_plain_parameter_list_is_one_group_at_scale_one():
    params = list(torch.nn.Linear(2, 2).parameters())
    assert param_groups(params) == [{"params": params, "lr_scale": 1.0}]
    assert [g["lr"] for g in build_optimizer(params, TrainConfig(lr=0.3)).param_groups] == [0.3, 0.3]
