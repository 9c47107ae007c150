"""DPO loss parameters: top-level beta plus a loss_options mapping, both checked against the loss's signature."""

import pytest

from polm.config import load_config
from polm.errors import PolmError
from polm.losses import PREFERENCE_LOSSES
from polm.recipes.dpo import DPOConfig, loss_kwargs


def kwargs_for(loss: str, *overrides: str) -> dict:
    cfg = load_config(DPOConfig, None, [f"loss={loss}", *overrides])
    return loss_kwargs(cfg, PREFERENCE_LOSSES.get(cfg.loss))


def test_beta_and_loss_options_become_the_loss_keywords():
    assert kwargs_for("dpo") == {}
    assert kwargs_for("ipo", "beta=0.5") == {"beta": 0.5}
    assert kwargs_for("simpo", "beta=2.5", "loss_options.gamma=0.5", "loss_options.sft_weight=1") == {
        "beta": 2.5, "gamma": 0.5, "sft_weight": 1}
    assert kwargs_for("kto", "loss_options={desirable_weight: 1.0, undesirable_weight: 1.5}") == {
        "desirable_weight": 1.0, "undesirable_weight": 1.5}


def test_an_option_the_loss_does_not_take_is_an_error_with_a_suggestion():
    with pytest.raises(PolmError) as err:
        kwargs_for("cdpo", "loss_options.label_smoothin=0.2")
    assert err.value.message == ("loss_options.label_smoothin: loss 'cdpo' has no parameter 'label_smoothin'. "
                                 "Did you mean 'label_smoothing'? Its parameters: beta, label_smoothing.")
    with pytest.raises(PolmError, match="^loss_options.gamma: loss 'dpo' has no parameter 'gamma'"):
        kwargs_for("dpo", "loss_options.gamma=1.0")
    with pytest.raises(PolmError, match="^loss_options.beta: beta is set in loss_options. Set the top-level beta"):
        kwargs_for("dpo", "loss_options.beta=0.2")
