"""Pruning math: masks by hand for magnitude, Wanda and SparseGPT; N:M counts; reconstruction error order; masks kept."""

from __future__ import annotations

import pytest
import torch

from polm.compress.prune import (
    PRUNE_METHODS,
    LayerStats,
    Sparsity,
    apply_masks,
    keep_mask,
    keep_masked,
    parse_pattern,
    reconstruction_error,
    sparsity_of,
)
from polm.errors import PolmError

W = torch.tensor([[1.0, -3.0, 2.0, 0.5],
                  [4.0, -1.0, 0.1, 2.0]])
HALF = Sparsity(0.5)


def stats_of(x: torch.Tensor) -> LayerStats:
    stats = LayerStats()
    stats.add(x, "sq_norm")
    stats.add(x, "hessian")
    return stats


def test_magnitude_keeps_the_largest_half_of_each_row():
    pruned, mask = PRUNE_METHODS.get("magnitude")(W, LayerStats(), HALF)
    # row 0: |W| = 1, 3, 2, .5 -> keep -3, 2; row 1: 4, 1, .1, 2 -> keep 4, 2
    assert mask.tolist() == [[False, True, True, False], [True, False, False, True]]
    assert pruned.tolist() == [[0.0, -3.0, 2.0, 0.0], [4.0, 0.0, 0.0, 2.0]]


def test_magnitude_layer_scope_compares_the_whole_matrix():
    _, mask = PRUNE_METHODS.get("magnitude")(W, LayerStats(), Sparsity(0.5, "layer"))
    # 8 weights, drop the 4 smallest |W|: .1, .5, 1 (row 0), 1 (row 1) -> row 0 keeps -3, 2; row 1 keeps 4, 2
    assert mask.sum() == 4
    assert mask.tolist() == [[False, True, True, False], [True, False, False, True]]
    _, mask = PRUNE_METHODS.get("magnitude")(W, LayerStats(), Sparsity(0.25, "layer"))
    assert mask.tolist() == [[True, True, True, False], [True, True, False, True]]


def test_wanda_scores_weights_by_input_norm_per_row():
    # one token per input column: ‖X_j‖ = 1, 0.1, 1, 10
    x = torch.diag(torch.tensor([1.0, 0.1, 1.0, 10.0]))
    pruned, mask = PRUNE_METHODS.get("wanda")(W, stats_of(x), HALF)
    # scores row 0: 1, .3, 2, 5 -> keep cols 2, 3; row 1: 4, .1, .1, 20 -> keep cols 0, 3
    assert mask.tolist() == [[False, False, True, True], [True, False, False, True]]
    assert pruned.tolist() == [[0.0, 0.0, 2.0, 0.5], [4.0, 0.0, 0.0, 2.0]]


def test_sparsegpt_prunes_by_obs_score_and_moves_the_error_onto_the_kept_weight():
    # H = [[2, 1], [1, 2]]: H⁻¹ = [[2, -1], [-1, 2]]/3; U_00² = 2/3, U_11² = [(H_11)⁻¹] = 1/2.
    # W = [1, 0.9]: scores 1²/(2/3) = 1.5 < 0.9²/(1/2) = 1.62 -> prune w_0 (magnitude would prune w_1),
    # then w_1 += -w_0 · H⁻¹_01 / H⁻¹_00 = 0.9 + 0.5 = 1.4 (minimises eᵀHe with e_0 = -1).
    stats = LayerStats(tokens=2, hessian=torch.tensor([[2.0, 1.0], [1.0, 2.0]]))
    pruned, mask = PRUNE_METHODS.get("sparsegpt")(torch.tensor([[1.0, 0.9]]), stats, HALF, damp=0.0)
    assert mask.tolist() == [[False, True]]
    torch.testing.assert_close(pruned, torch.tensor([[0.0, 1.4]]))


def test_sparsegpt_at_zero_sparsity_changes_nothing():
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    pruned, mask = PRUNE_METHODS.get("sparsegpt")(w, stats_of(x), Sparsity(0.0), block_size=4)
    assert mask.all()
    torch.testing.assert_close(pruned, w)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_masks_keep_exactly_n_of_every_m_inputs(method, pattern):
    sparsity = parse_pattern(pattern, 0.0)
    x = torch.randn(128, 32, generator=torch.Generator().manual_seed(0))
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    pruned, mask = PRUNE_METHODS.get(method)(w, stats_of(x), sparsity)
    groups = (pruned != 0).reshape(6, -1, sparsity.m).sum(-1)
    assert (groups == sparsity.n).all()
    assert mask.reshape(6, -1, sparsity.m).sum(-1).eq(sparsity.n).all()
    assert sparsity_of(pruned) == 0.5


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_achieved_sparsity_equals_the_target(method, fraction):
    x = torch.randn(128, 64, generator=torch.Generator().manual_seed(0))
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    pruned, mask = PRUNE_METHODS.get(method)(w, stats_of(x), Sparsity(fraction), **(
        {"block_size": 16} if method == "sparsegpt" else {}))
    assert sparsity_of(pruned) == fraction
    assert (~mask).sum(1).eq(int(fraction * 64)).all()    # per row
    assert (pruned[~mask] == 0).all()


def test_reconstruction_error_sparsegpt_below_wanda_on_correlated_inputs():
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(64, 64, generator=gen)
    scale = torch.logspace(-1, 1, 64).unsqueeze(0)       # uneven input norms, correlated features
    x = (torch.randn(512, 64, generator=gen) @ mix) * scale
    w = torch.randn(32, 64, generator=gen)
    stats = stats_of(x)
    errors = {m: reconstruction_error(x, w, PRUNE_METHODS.get(m)(w, stats, HALF)[0])
              for m in ("magnitude", "wanda", "sparsegpt")}
    assert errors["sparsegpt"] <= errors["wanda"]
    assert errors["wanda"] <= errors["magnitude"]        # reported: holds on this layer, not a theorem


def test_keep_mask_counts_are_exact_with_ties():
    mask = keep_mask(torch.ones(2, 8), Sparsity(0.5))
    assert mask.sum(1).tolist() == [4, 4]


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_sparsity_outside_zero_one_is_an_error(fraction):
    with pytest.raises(PolmError, match=r"sparsity must be in \[0, 1\)"):
        parse_pattern("unstructured", fraction)


@pytest.mark.parametrize("pattern", ["4:2", "2-4", "0:4", "2:2"])
def test_bad_pattern_is_an_error(pattern):
    with pytest.raises(PolmError, match="N:M"):
        parse_pattern(pattern, 0.5)


def test_keep_masked_holds_zeros_through_sgd_and_adamw_steps(tiny_llama):
    name = "model.layers.0.mlp.up_proj.weight"
    weight = dict(tiny_llama.named_parameters())[name]
    mask = torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    masks = {name: mask}
    keep_masked(tiny_llama, masks)
    assert (weight[~mask] == 0).all()
    before = weight.detach().clone()
    for opt in (torch.optim.SGD(tiny_llama.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1),
                torch.optim.AdamW(tiny_llama.parameters(), lr=0.1)):
        for _ in range(2):
            loss = tiny_llama(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    assert (weight[~mask] == 0).all()
    assert not torch.equal(weight[mask], before[mask])   # the kept weights did train


def test_apply_masks_names_an_unknown_parameter(tiny_llama):
    with pytest.raises(PolmError, match="names no parameter"):
        apply_masks(tiny_llama, {"model.nope.weight": torch.ones(1, dtype=torch.bool)})
