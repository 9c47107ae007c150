"""Preference losses: a value derived by hand for every loss, and parity with TRL 1.16's code to 1e-6.

TRL keeps its losses inside trainer methods, so the parity tests call those methods on a stand-in
`self` (only the attributes the method reads) and, for DPO/KTO, a stand-in model whose per-token
log-probs sum to the same sequence log-probs polm receives.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from polm.errors import PolmError
from polm.losses import PREFERENCE_LOSSES, PairLogps, UnpairedLogps, bradley_terry
from polm.losses.preference import log1mexp

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def one_pair(c=-4.0, r=-6.0, rc=-5.0, rr=-5.0, nc=2, nr=4) -> PairLogps:
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    return PairLogps(t(c), t(r), t(float(nc)), t(float(nr)), t(rc), t(rr))


# --- values derived by hand ----------------------------------------------------------------------
# One pair: log π(y_w) = -4, log π(y_l) = -6, reference -5 for both, |y_w| = 2, |y_l| = 4, β = 0.5.
# log-ratios: +1 and -1, so Δ = 2 and βΔ = 1.

def test_dpo_by_hand():
    out = PREFERENCE_LOSSES.get("dpo")(one_pair(), beta=0.5)
    assert out.losses.item() == pytest.approx(-math.log(sig(1.0)), abs=1e-12)   # 0.31326...
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.5)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.5)
    assert out.metrics["margins"].item() == pytest.approx(1.0)
    assert out.metrics["accuracy"].item() == 1.0


def test_cdpo_and_robust_by_hand():
    eps = 0.2
    c = PREFERENCE_LOSSES.get("cdpo")(one_pair(), beta=0.5, label_smoothing=eps).losses.item()
    assert c == pytest.approx(-0.8 * math.log(sig(1)) - 0.2 * math.log(sig(-1)), abs=1e-12)
    r = PREFERENCE_LOSSES.get("robust")(one_pair(), beta=0.5, label_smoothing=eps).losses.item()
    assert r == pytest.approx((-0.8 * math.log(sig(1)) + 0.2 * math.log(sig(-1))) / 0.6, abs=1e-12)
    # with ε = 0 all three are DPO
    dpo = PREFERENCE_LOSSES.get("dpo")(one_pair(), beta=0.5).losses.item()
    assert PREFERENCE_LOSSES.get("robust")(one_pair(), beta=0.5, label_smoothing=0.0).losses.item() == dpo


def test_hinge_by_hand():
    # 1 - βΔ = 1 - 1 = 0 at β = 0.5; at β = 0.25 it is 0.5
    assert PREFERENCE_LOSSES.get("hinge")(one_pair(), beta=0.5).losses.item() == 0.0
    assert PREFERENCE_LOSSES.get("hinge")(one_pair(), beta=0.25).losses.item() == pytest.approx(0.5)


def test_ipo_by_hand():
    # per-token log-ratios: 1/2 - (-1/4) = 0.75; target 1/(2β) = 1 → (0.75 - 1)² = 0.0625
    assert PREFERENCE_LOSSES.get("ipo")(one_pair(), beta=0.5).losses.item() == pytest.approx(0.0625)


def test_cpo_by_hand():
    # -log σ(0.5·(-4 + 6)) + 1.0 · (4 / 2)
    out = PREFERENCE_LOSSES.get("cpo")(one_pair(), beta=0.5, sft_weight=1.0)
    assert out.losses.item() == pytest.approx(-math.log(sig(1.0)) + 2.0)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-2.0)   # β · log π(y_w)


def test_simpo_by_hand():
    # ā_w = -2, ā_l = -1.5; β(ā_w - ā_l) - γ = 2·(-0.5) - 1 = -2
    out = PREFERENCE_LOSSES.get("simpo")(one_pair(), beta=2.0, gamma=1.0)
    assert out.losses.item() == pytest.approx(-math.log(sig(-2.0)))
    assert out.metrics["accuracy"].item() == 0.0   # the longer rejected answer has the higher mean log-prob


def test_orpo_by_hand():
    # ā_w = -2, ā_l = -1.5; log odds(p) = ā - log(1 - e^ā)
    lo_w = -2 - math.log(1 - math.exp(-2))
    lo_l = -1.5 - math.log(1 - math.exp(-1.5))
    out = PREFERENCE_LOSSES.get("orpo")(one_pair(), beta=0.1, sft_weight=1.0)
    assert out.losses.item() == pytest.approx(2.0 - 0.1 * math.log(sig(lo_w - lo_l)), abs=1e-12)


def test_kto_by_hand():
    # two examples: desirable with log-ratio +1, undesirable with log-ratio +0.5; KL samples give
    # mean(kl_policy - kl_ref) = 0.25 → z0 = 0.25; β = 1, λ_D = 1, λ_U = 2
    lp = UnpairedLogps(policy=torch.tensor([-3.0, -2.0], dtype=torch.float64),
                       ref=torch.tensor([-4.0, -2.5], dtype=torch.float64),
                       desirable=torch.tensor([True, False]),
                       kl_policy=torch.tensor([-1.0, -1.0], dtype=torch.float64),
                       kl_ref=torch.tensor([-1.5, -1.0], dtype=torch.float64))
    out = PREFERENCE_LOSSES.get("kto")(lp, beta=1.0, desirable_weight=1.0, undesirable_weight=2.0)
    assert out.losses.tolist() == pytest.approx([1 - sig(0.75), 2 * (1 - sig(-0.25))])
    assert out.metrics["kl"].item() == pytest.approx(0.25)
    assert out.metrics["accuracy"].item() == 0.5   # the undesirable one sits above z0
    # a negative KL estimate is clamped to 0
    lp.kl_ref = torch.tensor([0.0, 0.0], dtype=torch.float64)
    assert PREFERENCE_LOSSES.get("kto")(lp, beta=1.0).metrics["kl"].item() == 0.0


def test_bradley_terry_by_hand():
    out = bradley_terry(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), margin=torch.tensor([0.5, 0.0]))
    assert out.losses.tolist() == pytest.approx([-math.log(sig(0.5)), -math.log(sig(-1.0))])
    assert out.metrics["accuracy"].item() == 0.5
    assert out.metrics["margins"].item() == pytest.approx(0.0)


def test_log1mexp_is_accurate_at_both_ends():
    x = torch.tensor([-1e-8, -0.5, -30.0], dtype=torch.float64)
    assert log1mexp(x).tolist() == pytest.approx([math.log(1e-8), math.log(1 - math.exp(-0.5)), -math.exp(-30)],
                                                 rel=1e-6)


def test_reference_losses_refuse_missing_reference():
    lp = one_pair()
    lp.ref_chosen = None
    with pytest.raises(ValueError, match="reference"):
        PREFERENCE_LOSSES.get("dpo")(lp)


def test_each_loss_declares_reference_and_pairing_in_the_registry():
    reference_free = {name for name in PREFERENCE_LOSSES.names() if not PREFERENCE_LOSSES.meta(name)["needs_reference"]}
    assert reference_free == {"cpo", "orpo", "simpo"}
    assert [name for name in PREFERENCE_LOSSES.names() if PREFERENCE_LOSSES.meta(name)["unpaired"]] == ["kto"]
    assert PREFERENCE_LOSSES.meta("polm.losses.preference:simpo") == {"needs_reference": False, "unpaired": False}
    # an undeclared plug-in: a paired loss with a reference
    assert PREFERENCE_LOSSES.meta("polm.losses.preference:reward_metrics") == {"needs_reference": True,
                                                                                "unpaired": False}


def test_unknown_loss_suggests_name():
    with pytest.raises(PolmError, match="simpo"):
        PREFERENCE_LOSSES.get("simpoo")


def test_gradient_sign_pushes_chosen_up():
    lp = one_pair()
    lp.chosen.requires_grad_(True)
    lp.rejected.requires_grad_(True)
    for name in ("dpo", "cdpo", "robust", "ipo", "cpo", "simpo", "orpo"):
        lp.chosen.grad = lp.rejected.grad = None
        fn = PREFERENCE_LOSSES.get(name)
        kwargs = {"beta": 0.25} if name == "hinge" else {}
        fn(lp, **kwargs).losses.sum().backward()
        assert lp.chosen.grad.item() < 0 < lp.rejected.grad.item(), name


# --- parity with TRL 1.16 ------------------------------------------------------------------------

B, T = 6, 9


def random_pairs(seed: int = 0):
    """Per-token log-probs and completion masks for B pairs; returns (PairLogps, TRL-shaped tensors)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2 * B, T, dtype=torch.long)
    for row in range(2 * B):
        start = int(torch.randint(1, 4, (1,), generator=g))
        stop = int(torch.randint(start + 2, T + 1, (1,), generator=g))
        mask[row, start:stop] = 1
    shifted = mask[:, 1:].double()
    tok = -torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64) * 3 * shifted
    ref_tok = -torch.rand(2 * B, T - 1, generator=g, dtype=torch.float64) * 3 * shifted
    seq, ref_seq, n = tok.sum(1), ref_tok.sum(1), mask.sum(1).double()
    lp = PairLogps(seq[:B], seq[B:], n[:B], n[B:], ref_seq[:B], ref_seq[B:])
    return lp, {"tok": tok, "mask": mask, "ref": ref_seq}


def fake_accelerator():
    return SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x,
                           unwrap_model=lambda m: m)


def trl_dpo(loss_type: str, beta: float, label_smoothing: float, data: dict):
    from trl import DPOTrainer

    tok, mask = data["tok"], data["mask"]
    outputs = SimpleNamespace(log_probs=tok, entropy=torch.zeros_like(tok), mean_logits=torch.zeros_like(tok),
                              is_top1=torch.zeros_like(tok, dtype=torch.bool))
    model = lambda **kw: outputs  # noqa: E731
    me = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=fake_accelerator(),
                         aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
                         f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
                         label_smoothing=label_smoothing, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
                         _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "ref_chosen_logps": data["ref"][:B], "ref_rejected_logps": data["ref"][B:]}
    loss = DPOTrainer._compute_loss(me, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in me._metrics["train"].items()}


@pytest.mark.parametrize("name,trl_type,smoothing", [("dpo", "sigmoid", 0.0), ("hinge", "hinge", 0.0),
                                                      ("ipo", "ipo", 0.0), ("robust", "robust", 0.2)])
def test_dpo_family_matches_trl(name, trl_type, smoothing):
    lp, data = random_pairs()
    beta = 0.3
    kwargs = {"label_smoothing": smoothing} if name == "robust" else {}
    ours = PREFERENCE_LOSSES.get(name)(lp, beta=beta, **kwargs)
    theirs, metrics = trl_dpo(trl_type, beta, smoothing, data)
    assert ours.losses.mean().item() == pytest.approx(theirs.item(), abs=1e-6)
    for key, trl_key in (("rewards/chosen", "rewards/chosen"), ("rewards/rejected", "rewards/rejected"),
                         ("margins", "rewards/margins"), ("accuracy", "rewards/accuracies")):
        assert ours.metrics[key].item() == pytest.approx(metrics[trl_key], abs=1e-6), key


def cpo_self(loss_type: str, beta: float, label_smoothing: float, gamma: float = 0.0):
    return SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
                           simpo_gamma=gamma, accelerator=fake_accelerator())


def test_cdpo_matches_trl_label_smoothed_sigmoid():
    """TRL 1.16's DPO sigmoid lost its label smoothing; CPO's sigmoid keeps it, on logits = chosen - rejected,
    so it is called on the DPO log-ratios."""
    from trl.experimental.cpo import CPOTrainer

    lp, _ = random_pairs(1)
    ours = PREFERENCE_LOSSES.get("cdpo")(lp, beta=0.3, label_smoothing=0.15)
    chosen, rejected = lp.logratios()
    losses, r_w, r_l = CPOTrainer.cpo_loss(cpo_self("sigmoid", 0.3, 0.15), chosen, rejected)
    torch.testing.assert_close(ours.losses, losses, atol=1e-6, rtol=0)
    assert ours.metrics["rewards/chosen"].item() == pytest.approx(r_w.mean().item(), abs=1e-6)


@pytest.mark.parametrize("name", ["cpo", "simpo"])
def test_cpo_and_simpo_match_trl(name):
    from trl.experimental.cpo import CPOTrainer

    lp, _ = random_pairs(2)
    beta, gamma, eps = 0.7, 0.4, 0.1
    if name == "cpo":
        ours = PREFERENCE_LOSSES.get("cpo")(lp, beta=beta, label_smoothing=eps, sft_weight=0.0)
        chosen, rejected = lp.chosen, lp.rejected
        theirs, r_w, r_l = CPOTrainer.cpo_loss(cpo_self("sigmoid", beta, eps), chosen, rejected)
    else:
        ours = PREFERENCE_LOSSES.get("simpo")(lp, beta=beta, gamma=gamma, label_smoothing=eps)
        chosen, rejected = lp.mean_per_token()   # TRL's CPO averages log-probs for simpo
        theirs, r_w, r_l = CPOTrainer.cpo_loss(cpo_self("simpo", beta, eps, gamma), chosen, rejected)
    torch.testing.assert_close(ours.losses, theirs, atol=1e-6, rtol=0)
    assert ours.metrics["rewards/rejected"].item() == pytest.approx(r_l.mean().item(), abs=1e-6)
    assert ours.metrics["margins"].item() == pytest.approx((r_w - r_l).mean().item(), abs=1e-6)


def test_cpo_sft_term_matches_trl_nll_on_equal_lengths():
    """TRL adds cpo_alpha × (token-mean CE of the chosen batch); with equal lengths that is the mean of polm's
    per-pair chosen NLL, so the batch losses agree."""
    from trl.experimental.cpo import CPOTrainer

    lp, _ = random_pairs(3)
    lp.chosen_tokens = torch.full_like(lp.chosen_tokens, 5.0)
    ours = PREFERENCE_LOSSES.get("cpo")(lp, beta=0.2, sft_weight=1.0).losses.mean()
    pref, _, _ = CPOTrainer.cpo_loss(cpo_self("sigmoid", 0.2, 0.0), lp.chosen, lp.rejected)
    trl_nll = -lp.chosen.sum() / lp.chosen_tokens.sum()
    assert ours.item() == pytest.approx((pref.mean() + trl_nll).item(), abs=1e-6)


def test_orpo_matches_trl():
    from trl.experimental.orpo import ORPOTrainer

    lp, _ = random_pairs(4)
    lp.chosen_tokens = torch.full_like(lp.chosen_tokens, 4.0)   # TRL's NLL is a batch token mean
    ours = PREFERENCE_LOSSES.get("orpo")(lp, beta=0.25, sft_weight=1.0)
    avg_w, avg_l = lp.mean_per_token()
    me = SimpleNamespace(beta=0.25, accelerator=fake_accelerator())
    ratio_losses, r_w, r_l, _, log_odds = ORPOTrainer.odds_ratio_loss(me, avg_w, avg_l)
    trl_loss = -lp.chosen.sum() / lp.chosen_tokens.sum() - ratio_losses.mean()   # policy_nll_loss - losses.mean()
    assert ours.losses.mean().item() == pytest.approx(trl_loss.item(), abs=1e-6)
    assert ours.metrics["rewards/chosen"].item() == pytest.approx(r_w.mean().item(), abs=1e-6)
    assert ours.metrics["log_odds_ratio"].item() == pytest.approx(log_odds.item(), abs=1e-6)


def test_kto_matches_trl():
    from trl import KTOTrainer

    g = torch.Generator().manual_seed(5)
    n, width = 8, 7
    mask = torch.ones(n, width, dtype=torch.long)
    tok = -torch.rand(n, width - 1, generator=g, dtype=torch.float64) * 2
    ref = tok.sum(1) + torch.randn(n, generator=g, dtype=torch.float64)
    kl_pol, kl_ref = -torch.rand(n, generator=g, dtype=torch.float64) * 5, -torch.rand(n, generator=g, dtype=torch.float64) * 5
    labels = torch.tensor([True, False, True, True, False, False, True, False])
    outputs = SimpleNamespace(log_probs=tok, entropy=torch.zeros_like(tok), mean_logits=torch.zeros_like(tok))
    me = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=fake_accelerator(), aux_loss_enabled=False,
                         precompute_ref_logps=True, calculate_KL=True, loss_type="kto", beta=0.4,
                         desirable_weight=1.0, undesirable_weight=1.5, _metrics=defaultdict(lambda: defaultdict(list)),
                         _total_train_tokens=0, _tp_size=1, _compute_kl_logps=lambda model, batch: kl_pol)
    batch = {"input_ids": torch.zeros_like(mask), "attention_mask": mask, "completion_mask": mask, "label": labels,
             "ref_logps": ref, "ref_KL_logps": kl_ref}
    theirs = KTOTrainer._compute_loss(me, lambda **kw: outputs, batch, return_outputs=False)
    lp = UnpairedLogps(tok.sum(1), ref, labels, kl_pol, kl_ref)
    ours = PREFERENCE_LOSSES.get("kto")(lp, beta=0.4, desirable_weight=1.0, undesirable_weight=1.5)
    metrics = {k: v[-1] for k, v in me._metrics["train"].items()}
    assert ours.losses.mean().item() == pytest.approx(theirs.item(), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "kl"):
        assert ours.metrics[key].item() == pytest.approx(metrics[key], abs=1e-6), key


def test_bradley_terry_matches_trl_reward_trainer():
    from trl import RewardTrainer

    g = torch.Generator().manual_seed(6)
    scores = torch.randn(2 * B, 1, generator=g, dtype=torch.float64)
    margin = torch.rand(B, generator=g, dtype=torch.float64)
    me = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=fake_accelerator(),
                         args=SimpleNamespace(center_rewards_coefficient=0.01),
                         _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"attention_mask": torch.ones(2 * B, 3), "margin": margin}
    theirs = RewardTrainer.compute_loss(me, lambda **kw: SimpleNamespace(logits=scores), inputs)
    ours = bradley_terry(scores[:B, 0], scores[B:, 0], margin=margin, center_coefficient=0.01)
    assert ours.losses.mean().item() == pytest.approx(theirs.item(), abs=1e-6)
    assert ours.metrics["accuracy"].item() == pytest.approx(me._metrics["train"]["accuracy"][-1], abs=1e-6)
