"""Advantage estimators against values derived by hand (and TRL's GRPO normalisation)."""

import math

import pytest
import torch

from polm.advantages import ADVANTAGES, gae_advantages
from polm.errors import PolmError


def test_grpo_group_normalised_with_unbiased_std():
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735; group 2 identical rewards -> 0
    adv = ADVANTAGES.get("grpo")(torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), group_size=4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0]))


def test_grpo_without_std_and_dr_grpo_only_centre():
    rewards = torch.tensor([1.0, 0.0, 3.0, 0.0])   # groups of 2: means 0.5 and 1.5
    expected = torch.tensor([0.5, -0.5, 1.5, -1.5])
    torch.testing.assert_close(ADVANTAGES.get("grpo")(rewards, 2, scale_std=False), expected)
    torch.testing.assert_close(ADVANTAGES.get("dr_grpo")(rewards, 2), expected)


def test_rloo_leave_one_out_baseline():
    # A_0 = 1 - (2 + 3 + 6) / 3 = -8/3 ; A_3 = 6 - (1 + 2 + 3) / 3 = 4
    adv = ADVANTAGES.get("rloo")(torch.tensor([1.0, 2.0, 3.0, 6.0]), group_size=4)
    torch.testing.assert_close(adv, torch.tensor([-8 / 3, 2 - 10 / 3, 3 - 3.0, 4.0]))


def test_reinforce_pp_whitens_over_the_batch_not_the_group():
    # centred per group of 2: [.5, -.5, 2, -2]; batch mean 0, unbiased std sqrt(8.5 / 3)
    adv = ADVANTAGES.get("reinforce_pp")(torch.tensor([1.0, 0.0, 4.0, 0.0]), group_size=2)
    s = math.sqrt(8.5 / 3) + 1e-4
    torch.testing.assert_close(adv, torch.tensor([0.5 / s, -0.5 / s, 2 / s, -2 / s]))


def test_gae_hand_computed_trajectory_with_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.9)
    # row 0: δ = [.1, .1, .3]; A2 = .3, A1 = .1 + .9*.3 = .37, A0 = .1 + .9*.37 = .433
    # row 1: the padded value 9.0 is ignored; A1 = 2 - .2 = 1.8, A0 = .1 + .9*1.8 = 1.72
    torch.testing.assert_close(adv, torch.tensor([[0.433, 0.37, 0.3], [1.72, 1.8, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.933, 0.97, 1.0], [1.82, 2.0, 0.0]]))


def test_gae_with_discount():
    adv, _ = gae_advantages(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]),
                            torch.ones(1, 3), gamma=0.9, lam=0.8)
    # δ2 = .3, δ1 = .9*.7 - .6 = .03, δ0 = .9*.6 - .5 = .04; γλ = .72
    torch.testing.assert_close(adv, torch.tensor([[0.04 + 0.72 * 0.246, 0.03 + 0.72 * 0.3, 0.3]]))


def test_bad_inputs_are_explained():
    with pytest.raises(PolmError, match="do not split into groups of 4"):
        ADVANTAGES.get("grpo")(torch.zeros(6), group_size=4)
    with pytest.raises(PolmError, match="at least 2 completions"):
        ADVANTAGES.get("rloo")(torch.zeros(3), group_size=1)
    with pytest.raises(PolmError, match="Did you mean 'rloo'"):
        ADVANTAGES.get("rlo")


def test_gae_is_a_plain_function_not_a_group_estimator():
    assert "gae" not in ADVANTAGES and set(ADVANTAGES.names()) == {"grpo", "dr_grpo", "rloo", "reinforce_pp"}
    from polm.recipes.grpo import GRPOConfig

    with pytest.raises(PolmError, match="advantage=gae needs a value model.*Use `polm ppo` for GAE"):
        GRPOConfig(advantage="gae").validate()
