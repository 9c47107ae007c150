"""ITC, ITM (with hard negatives) and ITG against values derived by hand; the loss mixture."""

from __future__ import annotations

import math

import pytest
import torch

from polm.errors import PolmError
from polm.losses.vlm import (
    VLM_LOSSES,
    hard_negative_weights,
    hard_negatives,
    itc_loss,
    itg_loss,
    itm_loss,
    mix_losses,
)
from polm.ops.logprobs import IGNORE_INDEX


def test_itc_on_orthogonal_matching_pairs():
    # s = I, 1/τ = 2: z = [[2,0],[0,2]]; each row and column: -log(e²/(e²+1)) = log(1 + e⁻²)
    eye = torch.eye(2)
    loss = itc_loss(eye * 3.0, eye, torch.tensor(math.log(2.0)))   # scale-free: norms do not matter
    assert loss.item() == pytest.approx(math.log1p(math.exp(-2)), abs=1e-6)


def test_itc_is_the_mean_of_both_directions():
    # images (1,0),(0,1); texts (1,0),(1,0); 1/τ = 1: z = [[1,1],[0,0]]
    # image->text rows: log 2, log 2.  text->image rows of zᵀ = [[1,0],[1,0]]: log(1+e⁻¹), log(1+e)
    image, text = torch.tensor([[1.0, 0], [0, 1]]), torch.tensor([[1.0, 0], [2, 0]])
    i2t = math.log(2)
    t2i = (math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2
    assert itc_loss(image, text, torch.tensor(0.0)).item() == pytest.approx((i2t + t2i) / 2, abs=1e-6)


def test_itc_temperature_is_learned_and_clamped():
    scale = torch.tensor(math.log(2.0), requires_grad=True)
    itc_loss(torch.eye(2), torch.eye(2), scale).backward()
    # d/ds log(1 + e^{-s·1}) at s = 2, times ds/dlog s = s:  -e⁻²/(1+e⁻²) · 2
    assert scale.grad.item() == pytest.approx(-2 * math.exp(-2) / (1 + math.exp(-2)), abs=1e-6)
    big = itc_loss(torch.eye(2), torch.eye(2), torch.tensor(10.0))
    assert big.item() == pytest.approx(math.log1p(math.exp(-100)), abs=1e-12)


SIM = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.9, 0.7], [0.3, 0.1, 0.9]])


def test_hard_negative_weights_are_the_softmax_without_the_positive():
    w_i2t, w_t2i = hard_negative_weights(SIM)
    e = math.exp
    assert w_i2t[0].tolist() == pytest.approx([0, e(.8) / (e(.8) + e(.1)), e(.1) / (e(.8) + e(.1))], abs=1e-6)
    # text 1's images are column 1 of SIM: 0.8 (image 0), 0.1 (image 2)
    assert w_t2i[1].tolist() == pytest.approx([e(.8) / (e(.8) + e(.1)), 0, e(.1) / (e(.8) + e(.1))], abs=1e-6)


def test_hardest_negatives_and_excluded_duplicates():
    neg_text, neg_image = hard_negatives(SIM, sample=False)
    assert neg_text.tolist() == [1, 2, 0] and neg_image.tolist() == [2, 0, 1]
    same = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)   # items 0 and 1 also match
    neg_text, _ = hard_negatives(SIM, same=same, sample=False)
    assert neg_text.tolist() == [2, 2, 0]


def test_sampled_negatives_follow_the_weights_and_never_the_positive():
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([hard_negatives(SIM, temperature=0.1, generator=gen)[0] for _ in range(2000)])
    assert not (draws == torch.arange(3)).any()
    # image 0: e^{8}/(e^{8}+e^{1}) ≈ 0.99909 of draws are text 1
    assert (draws[:, 0] == 1).float().mean().item() == pytest.approx(1 / (1 + math.exp(-7)), abs=0.005)


def test_itm_binary_cross_entropy():
    logits, match = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 0])
    expected = (math.log(math.e ** 2 + 1) + math.log(1 + math.e)) / 2
    assert itm_loss(logits, match).item() == pytest.approx(expected, abs=1e-6)


def test_itg_is_target_only_next_token_ce():
    weight = torch.tensor([[1.0, 0], [0, 1], [0, 0]])            # V=3, H=2
    hidden = torch.tensor([[[0.0, 0], [1, 0], [5, 5]]])          # the last position predicts nothing
    labels = torch.tensor([[IGNORE_INDEX, 1, 2]])                # position 0 -> 1, position 1 -> 2
    # row 0: z = (0,0,0), CE = log 3;  row 1: z = (1,0,0), target 2: CE = log(e + 2)
    expected = (math.log(3) + math.log(math.e + 2)) / 2
    assert itg_loss(hidden, weight, labels).item() == pytest.approx(expected, abs=1e-6)
    assert itg_loss(hidden, weight, torch.full_like(labels, IGNORE_INDEX)).item() == 0.0


def test_mix_weights_and_zero_weights():
    losses = {"itc": torch.tensor(2.0), "itm": torch.tensor(float("nan")), "itg": torch.tensor(3.0)}
    assert mix_losses(losses, {"itc": 0.5, "itg": 2.0, "itm": 0.0}).item() == 7.0
    zero = mix_losses(losses, {"itc": 0.0, "itm": 0.0, "itg": 0.0})
    assert isinstance(zero, torch.Tensor) and zero.item() == 0.0
    assert mix_losses({}, {"itg": 0.0}).item() == 0.0
    with pytest.raises(PolmError, match="Did you mean 'itc'"):
        mix_losses(losses, {"itcc": 1.0})
    with pytest.raises(PolmError, match="negative"):
        mix_losses(losses, {"itg": -1.0})
    with pytest.raises(PolmError, match="was not computed"):
        mix_losses({"itg": torch.tensor(1.0)}, {"itc": 1.0})
    assert set(VLM_LOSSES.names()) == {"itc", "itm", "itg"}


def test_itg_matches_the_sft_loss_of_a_model(tiny_llama):
    from polm.ops.logprobs import causal_lm_loss

    ids = torch.tensor([[3, 9, 14, 15, 20, 7]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 15, 20, 7]])
    total, count = causal_lm_loss(tiny_llama, {"input_ids": ids, "labels": labels})
    hidden = tiny_llama.model(input_ids=ids).last_hidden_state
    mean = itg_loss(hidden, tiny_llama.lm_head.weight, labels)
    assert count == 3 and mean.item() == pytest.approx(total.item() / 3, rel=1e-5)
