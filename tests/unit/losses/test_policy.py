"""Policy losses and KL estimators: hand-derived values, and parity with TRL GRPOTrainer._compute_loss."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from polm.errors import PolmError
from polm.losses.kl import KL_ESTIMATORS
from polm.losses.policy import POLICY_LOSSES, per_token_loss


def test_kl_estimators_by_hand():
    logp, ref = torch.log(torch.tensor([[0.5]])), torch.log(torch.tensor([[0.25]]))
    ln2 = math.log(2)
    assert KL_ESTIMATORS.get("k1")(logp, ref).item() == pytest.approx(ln2)
    assert KL_ESTIMATORS.get("k2")(logp, ref).item() == pytest.approx(0.5 * ln2**2)
    assert KL_ESTIMATORS.get("k3")(logp, ref).item() == pytest.approx(0.5 + ln2 - 1)   # e^d - d - 1, d = -ln 2
    assert KL_ESTIMATORS.get("none")(logp, ref).item() == 0.0


def test_clipped_surrogate_by_hand_including_clip_higher():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.25]]))
    mask = torch.ones(1, 3)
    # ρ = 1.5, A = +1 -> -min(1.5, 1.2) = -1.2 ; ρ = .5, A = -1 -> -min(-.5, -.8) = .8 ; ρ = 1.25 -> -1.2
    loss, m = per_token_loss(logp, old, torch.tensor([[1.0, -1.0, 1.0]]), mask, clip_low=0.2)
    torch.testing.assert_close(loss, torch.tensor([[-1.2, 0.8, -1.2]]))
    assert m["clip/high"] == pytest.approx(2 / 3) and m["clip/low"] == pytest.approx(1 / 3)
    assert m["clip/region"] == pytest.approx(1.0)
    # clip-higher ε_high = .28: ρ = 1.25 is no longer clipped
    loss, m = per_token_loss(logp, old, torch.tensor([[1.0, -1.0, 1.0]]), mask, clip_low=0.2, clip_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.28, 0.8, -1.25]]))
    assert m["clip/high"] == pytest.approx(1 / 3)


def test_aggregations_by_hand():
    # ρ = 1 everywhere so ℓ_t = -A: row 0 has 2 tokens of -1, row 1 one token of +3
    lp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    adv = torch.tensor([1.0, -3.0])
    grpo = POLICY_LOSSES.get("grpo")(lp, lp, adv, mask)
    assert (grpo.loss_sum.item(), grpo.count) == (pytest.approx(2.0), 2)         # (-1 + 3) / 2 sequences
    dapo = POLICY_LOSSES.get("dapo")(lp, lp, adv, mask)
    assert (dapo.loss_sum.item(), dapo.count) == (pytest.approx(1.0), 3)         # (-2 + 3) / 3 tokens
    dr = POLICY_LOSSES.get("dr_grpo")(lp, lp, adv, mask, max_length=4)
    assert (dr.loss_sum.item(), dr.count) == (pytest.approx(0.25), 2)            # (-2 + 3) / 4, / 2 sequences


def test_kl_term_is_added_per_token_and_reported():
    lp = torch.log(torch.full((1, 2), 0.5))
    ref = torch.log(torch.full((1, 2), 0.25))
    out = POLICY_LOSSES.get("dapo")(lp, lp, torch.zeros(1), torch.ones(1, 2), ref_logprobs=ref, beta=0.1, kl="k1")
    assert out.loss_sum.item() == pytest.approx(2 * 0.1 * math.log(2))
    assert out.metrics["kl"] == pytest.approx(math.log(2))


def test_bad_shapes_and_missing_reference_are_explained():
    with pytest.raises(PolmError, match="inputs disagree"):
        POLICY_LOSSES.get("grpo")(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.ones(2, 3))
    with pytest.raises(PolmError, match="fit neither"):
        POLICY_LOSSES.get("grpo")(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(PolmError, match="needs reference logprobs"):
        POLICY_LOSSES.get("grpo")(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3), beta=0.1)


def test_every_policy_loss_takes_the_same_keyword_parameters():
    import inspect

    def keywords(fn):
        return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}

    expected = {"ref_logprobs": None, "beta": 0.0, "kl": "k3", "clip_low": 0.2, "clip_high": None, "entropy": None,
                "max_length": None}
    assert {name: keywords(POLICY_LOSSES.get(name)) for name in POLICY_LOSSES.names()} == {
        name: expected for name in ("bnpo", "dapo", "dr_grpo", "grpo")}
    lp, mask, adv = torch.zeros(2, 3), torch.tensor([[1, 1, 0], [1, 0, 0]]), torch.tensor([1.0, -3.0])
    for name in ("grpo", "dapo"):                    # max_length is accepted and has no effect on them
        a, b = (POLICY_LOSSES.get(name)(lp, lp, adv, mask, max_length=m) for m in (None, 64))
        assert (a.loss_sum.item(), a.count) == (b.loss_sum.item(), b.count)


# --- parity with TRL -----------------------------------------------------------------------------------

def _fixed_tensors(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 7
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)     # ratios well outside the clip range
    ref = logp + 0.2 * torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 1, 6, 4])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    return logp, old, ref, mask, adv


def _trl_loss(loss_type: str, logp, old, ref, mask, adv, *, beta: float, eps_low: float, eps_high: float,
              max_len: int) -> torch.Tensor:
    """Call TRL's own GRPOTrainer._compute_loss on a stand-in trainer whose model returns fixed logprobs."""
    from trl import GRPOTrainer

    B, T = logp.shape
    accelerator = SimpleNamespace(num_processes=1, gather=lambda x: x, gather_for_metrics=lambda x: x,
                                  reduce=lambda x, reduction="sum": x, sync_gradients=True)
    args = SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1)
    trainer = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
        args=args, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=max_len,
        accelerator=accelerator, _entropy_bonus_enabled=False, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None))
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    return GRPOTrainer._compute_loss(trainer, None, inputs)


@pytest.mark.parametrize(("ours", "trl_type"), [("grpo", "grpo"), ("dapo", "dapo"), ("bnpo", "bnpo"),
                                                ("dr_grpo", "dr_grpo")])
@pytest.mark.parametrize(("beta", "eps_high"), [(0.0, 0.2), (0.04, 0.28)])
def test_parity_with_trl_compute_loss(ours, trl_type, beta, eps_high):
    logp, old, ref, mask, adv = _fixed_tensors()
    expected = _trl_loss(trl_type, logp, old, ref, mask, adv, beta=beta, eps_low=0.2, eps_high=eps_high, max_len=8)
    out = POLICY_LOSSES.get(ours)(logp, old, adv, mask, ref_logprobs=ref, beta=beta, kl="k3", clip_low=0.2,
                                  clip_high=eps_high, max_length=8)
    assert abs(out.loss_sum.item() / out.count - expected.item()) < 1e-6
    assert 0 < out.metrics["clip/region"] < 1   # the fixed tensors do exercise the clip


def test_clipped_value_loss_by_hand():
    from polm.losses.policy import clipped_value_loss

    # token 0: V = 1.0, V_old = 0.5, R = 2 -> clipped V = 0.7: max(.5 * 1, .5 * 1.69) = .845 (clip active)
    # token 1: V = 0.4, V_old = 0.5, R = 0 -> clipped V = 0.4: .5 * .16 = .08 ; token 2 is masked
    out = clipped_value_loss(torch.tensor([[1.0, 0.4, 9.0]]), torch.tensor([[0.5, 0.5, 0.0]]),
                             torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[1, 1, 0]]), clip=0.2)
    assert out.loss_sum.item() == pytest.approx(0.845 + 0.08)
    assert out.count == 2 and out.metrics["value/clip"] == pytest.approx(0.5)
