"""Merge methods against values derived by hand (TIES on 3×4 tensors, SLERP geometry, DARE expectation)."""

from __future__ import annotations

import math

import pytest
import torch

from polm.errors import PolmError
from polm.merge.methods import (
    MERGE_METHODS,
    dare_linear,
    dare_ties,
    elect_sign,
    linear,
    magnitude_trim_,
    merge_method,
    method_spec,
    random_drop_,
    slerp,
    task_arithmetic,
    ties,
)

# Three task vectors on a 3×4 tensor; magnitudes within each are distinct around the density cut.
TAU = torch.tensor([
    [[4.0, -1.0, 2.5, 0.5], [-3.0, 6.0, -0.2, 1.5], [5.0, -0.1, 0.3, -2.0]],
    [[-2.0, 3.0, 1.0, -4.0], [0.5, -5.0, 2.2, 0.1], [1.5, 0.2, -6.0, 0.3]],
    [[1.0, 2.0, -3.0, 0.2], [4.0, -0.5, -1.0, 6.0], [-0.3, 5.0, 0.1, 2.5]],
])
# density 0.5 keeps the 6 largest |τ| of 12 in each (by hand: the 7th largest is 1.5, 1.5 and 1.0).
TRIMMED = torch.tensor([
    [[4.0, 0.0, 2.5, 0.0], [-3.0, 6.0, 0.0, 0.0], [5.0, 0.0, 0.0, -2.0]],
    [[-2.0, 3.0, 0.0, -4.0], [0.0, -5.0, 2.2, 0.0], [0.0, 0.0, -6.0, 0.0]],
    [[0.0, 2.0, -3.0, 0.0], [4.0, 0.0, 0.0, 6.0], [0.0, 5.0, 0.0, 2.5]],
])
BASE = torch.full((3, 4), 0.5)


def test_magnitude_trim_keeps_the_largest_half():
    for tau, expected in zip(TAU, TRIMMED):
        torch.testing.assert_close(magnitude_trim_(tau.clone(), 0.5), expected, rtol=0, atol=0)
    first = TAU[0].clone()
    assert magnitude_trim_(first, 1.0) is first and torch.equal(first, TAU[0])
    # k = max(1, floor(0.01 * 12)) = 1: only the 6.0 survives
    assert magnitude_trim_(TAU[0].clone(), 0.01).count_nonzero() == 1


def test_magnitude_trim_keeps_exactly_k_and_breaks_ties_by_position():
    delta = torch.tensor([0.5, -2.0, 1.0, -1.0, 3.0, 1.0, 0.0, -1.0])
    # k = 4 of 8: 3 and -2 are above the cut at 1.0; three entries tie at |1.0|, the first two win
    assert magnitude_trim_(delta.clone(), 0.5).tolist() == [0.0, -2.0, 1.0, -1.0, 3.0, 0.0, 0.0, 0.0]
    # k = 7: the cut is 0; zeros may stay in or out, the result is the same
    assert magnitude_trim_(delta.clone(), 7 / 8).tolist() == delta.tolist()


def test_ties_sign_election_and_disjoint_mean_by_hand():
    """Entry by entry, γ = sign(Σ trimmed), mean over the vectors whose sign agrees with γ:
    (0,0): 4,-2,0 -> + -> 4          (0,1): 0,3,2 -> + -> (3+2)/2 = 2.5
    (0,2): 2.5,0,-3 -> - -> -3       (0,3): -4 alone -> -4
    (1,0): -3,0,4 -> + -> 4          (1,1): 6,-5,0 -> + -> 6 (mass beats the opposite 5)
    (1,2): 2.2  (1,3): 6  (2,0): 5  (2,1): 5  (2,2): -6
    (2,3): -2,0,2.5 -> + -> 2.5
    """
    expected = BASE + torch.tensor([[4.0, 2.5, -3.0, -4.0], [4.0, 6.0, 2.2, 6.0], [5.0, 5.0, -6.0, 2.5]])
    merged = ties(BASE, list(BASE + TAU), weight=[1, 1, 1], density=[0.5, 0.5, 0.5])
    torch.testing.assert_close(merged, expected)


def test_ties_without_normalize_sums_the_agreeing_entries():
    merged = ties(BASE, list(BASE + TAU), weight=[1, 1, 1], density=[0.5] * 3, normalize=False)
    assert merged[0, 1] == pytest.approx(0.5 + 3 + 2)          # both agreeing entries, not their mean
    assert merged[1, 1] == pytest.approx(0.5 + 6)


def test_sign_election_count_differs_from_sum_where_mass_and_votes_disagree():
    # (0,2): trimmed 2.5, 0, -3 -> mass says -, the vote is 1:1 and 0 counts as +
    assert elect_sign(TRIMMED, "sum")[0, 2] == -1
    assert elect_sign(TRIMMED, "count")[0, 2] == 1
    assert elect_sign(TRIMMED, "sum")[1, 1] == elect_sign(TRIMMED, "count")[1, 1] == 1   # 6 vs -5; 1:1 vote
    merged = ties(BASE, list(BASE + TAU), weight=[1] * 3, density=[0.5] * 3, consensus="count")
    assert merged[0, 2] == pytest.approx(0.5 + 2.5)


def test_linear_by_hand():
    a, b = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    torch.testing.assert_close(linear(None, [a, b], weight=[1, 3]), torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    torch.testing.assert_close(linear(None, [a, b], weight=[1, 3], normalize=False),
                               torch.tensor([[16.0, 20.0], [24.0, 28.0]]))
    with pytest.raises(ValueError, match="sum to 0"):
        linear(None, [a, b], weight=[1, -1])


def test_task_arithmetic_by_hand():
    base, m1, m2 = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0]), torch.tensor([1.0, 5.0])
    # base + 0.5·(1, 0) + 2·(0, 3)
    torch.testing.assert_close(task_arithmetic(base, [m1, m2], weight=[0.5, 2]), torch.tensor([1.5, 8.0]))
    # normalized: base + (0.5, 6) / 2.5
    torch.testing.assert_close(task_arithmetic(base, [m1, m2], weight=[0.5, 2], normalize=True),
                               torch.tensor([1.2, 4.4]))
    torch.testing.assert_close(task_arithmetic(base, [m1, m2], weight=[0.5, 2], scale=0.5), torch.tensor([1.25, 5.0]))


def test_bf16_inputs_are_merged_in_float32():
    base = torch.tensor([1.0, 1.0], dtype=torch.bfloat16)
    # 1 + 0.5·2⁻⁷ = 1 + 2⁻⁸ is below bf16's resolution near 1, but exact in the float32 result
    merged = task_arithmetic(base, [base + 2 ** -7], weight=[0.5])
    assert merged.dtype == torch.float32 and merged[0].item() == 1 + 2 ** -8


def test_dare_inverse_rescale_keeps_the_expectation():
    delta = torch.linspace(-2, 3, 50)
    draws = delta.expand(20_000, 50).clone()        # 20k independent masks of the same task vector
    p = 0.3
    kept = random_drop_(draws.clone(), p, "inverse", torch.Generator().manual_seed(0))
    # each entry: δ/p with probability p, else 0 -> mean δ, std |δ|·sqrt((1-p)/p/20000) ≈ 0.011|δ|
    assert (kept.mean(0) - delta).abs().le(0.06 * delta.abs() + 1e-6).all()
    assert (kept != 0).float().mean().item() == pytest.approx(p, abs=0.005)
    unscaled = random_drop_(draws.clone(), p, "none", torch.Generator().manual_seed(0))
    assert (unscaled.mean(0) - p * delta).abs().le(0.02 * delta.abs() + 1e-6).all()


def test_dare_l1_rescale_keeps_the_l1_norm_and_seeds_reproduce():
    delta = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    a = random_drop_(delta.clone(), 0.4, "l1", torch.Generator().manual_seed(7))
    b = random_drop_(delta.clone(), 0.4, "l1", torch.Generator().manual_seed(7))
    c = random_drop_(delta.clone(), 0.4, "l1", torch.Generator().manual_seed(8))
    assert a.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert random_drop_(delta, 1.0) is delta


def test_dare_at_full_density_is_task_arithmetic_and_ties():
    models = list(BASE + TAU)
    torch.testing.assert_close(dare_linear(BASE, models, weight=[1, 2, 1], density=[1, 1, 1]),
                               task_arithmetic(BASE, models, weight=[1, 2, 1]))
    torch.testing.assert_close(dare_ties(BASE, models, weight=[1] * 3, density=[1] * 3, normalize=True),
                               ties(BASE, models, weight=[1] * 3, density=[1] * 3))


def test_slerp_endpoints_and_right_angle():
    v0, v1 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert torch.equal(slerp(v0, [v1], t=0.0), v0)
    assert torch.equal(slerp(v0, [v1], t=1.0), v1)
    # Ω = π/2: coefficients sin(π/4)/sin(π/2) = √2/2 each, staying on the unit circle
    half = slerp(v0, [v1], t=0.5)
    torch.testing.assert_close(half, torch.tensor([[math.sqrt(0.5), math.sqrt(0.5)], [0.0, 0.0]]))
    # t = 1/3 of the way round: (cos 30°, sin 30°)
    third = slerp(v0, [v1], t=1 / 3)
    torch.testing.assert_close(third[0], torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]))


def test_slerp_parallel_antiparallel_and_zero_vectors_fall_back_to_lerp():
    v = torch.tensor([3.0, -1.0, 2.0])
    torch.testing.assert_close(slerp(v, [2 * v], t=0.5), 1.5 * v)            # parallel
    torch.testing.assert_close(slerp(v, [-v], t=0.25), 0.5 * v)              # antiparallel: 0.75v - 0.25v
    zero = slerp(torch.zeros(3), [v], t=0.5)                                 # no direction: no NaN
    assert torch.isfinite(zero).all()


def test_registry_holds_every_method_with_its_contract():
    assert {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp"} <= set(MERGE_METHODS.names())
    assert not method_spec("linear").uses_base and method_spec("ties").uses_base
    assert method_spec("ties").per_input == {"weight": 1.0, "density": 1.0}
    assert method_spec("ties").shared == {"normalize": True, "scale": 1.0, "consensus": "sum"}
    assert method_spec("dare_ties").random and not method_spec("ties").random
    assert method_spec("slerp").max_inputs == 1 and method_spec("slerp").shared["t"] == 0.5
    with pytest.raises(PolmError, match="Did you mean 'ties'"):
        MERGE_METHODS.get("tie")
    assert MERGE_METHODS.get("polm.merge.methods:slerp") is slerp


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "linear"])
def test_methods_leave_their_inputs_untouched(method):
    fn = MERGE_METHODS.get(method)
    base, models = BASE.clone(), [m.clone() for m in BASE + TAU]
    kwargs = {k: [0.5] * 3 for k in method_spec(method).per_input}
    fn(base, models[:1] if method == "slerp" else models, **kwargs)
    assert torch.equal(base, BASE) and all(torch.equal(m, e) for m, e in zip(models, BASE + TAU))


def test_merge_plugins_must_declare_their_contract():
    with pytest.raises(PolmError, match="'math:sqrt' is not a registered merge method. Decorate it with "
                                        "polm.merge.methods.merge_method"):
        method_spec("math:sqrt")
    assert method_spec("polm.merge.methods:ties") == method_spec("ties")

    def no_default(base, tensors, weight, t):
        return base

    with pytest.raises(ValueError, match="parameter 't' is neither per-input nor has a default"):
        merge_method("never_registered", uses_base=True, per_input={"weight": 1.0})(no_default)
    assert "never_registered" not in MERGE_METHODS
