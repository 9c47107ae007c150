"""Bootstrap intervals, paired differences, pass@k and majority votes against values derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from polm.eval.stats import bootstrap_ci, majority_vote, paired_difference, pass_at_k, summarize


def test_bootstrap_ci_matches_the_normal_approximation_for_bernoulli():
    # 2,000 items with 600 correct: p = 0.3, standard error sqrt(p(1-p)/n) = 0.010247,
    # so the 95% interval is 0.3 ± 1.96 * 0.010247 = [0.2799, 0.3201].
    values = np.array([1.0] * 600 + [0.0] * 1400)
    low, high = bootstrap_ci(values, n_resamples=4000)
    se = math.sqrt(0.3 * 0.7 / 2000)
    assert low == pytest.approx(0.3 - 1.96 * se, abs=0.003)
    assert high == pytest.approx(0.3 + 1.96 * se, abs=0.003)


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    for rep in range(200):
        sample = rng.normal(loc=2.0, scale=1.0, size=100)
        low, high = bootstrap_ci(sample, n_resamples=1000, seed=rep)
        covered += low <= 2.0 <= high
    # Binomial(200, 0.95) lies in [180, 199] with probability > 0.999; percentile bootstrap on
    # n=100 is known to under-cover slightly (~94%).
    assert 180 <= covered <= 199


def test_bootstrap_of_a_ratio_statistic():
    # Columns (nll, tokens): the ratio statistic is Σnll/Σtokens; constant ratio 2.0 → degenerate CI.
    data = np.array([[2.0, 1.0], [4.0, 2.0], [10.0, 5.0]])
    low, high = bootstrap_ci(data, stat=lambda d: d[:, 0].sum() / d[:, 1].sum())
    assert low == high == pytest.approx(2.0)


def test_summarize_and_degenerate_inputs():
    out = summarize([1.0, 0.0, 1.0, 1.0])
    assert out["value"] == 0.75 and out["n"] == 4 and 0.0 <= out["ci_low"] <= 0.75 <= out["ci_high"] <= 1.0
    assert summarize([1.0, 1.0, 1.0]) == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 3}
    assert math.isnan(summarize([])["value"])


def test_paired_difference_cancels_item_difficulty():
    # B beats A by exactly 1 on every item, while the items themselves vary hugely: the paired
    # difference is exactly 1 with a zero-width interval.
    a = np.arange(50, dtype=float) * 10
    out = paired_difference(a, a + 1)
    assert out == {"diff": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 50}
    mixed = paired_difference([1, 0, 1, 0], [1, 1, 1, 1])
    assert mixed["diff"] == 0.5 and mixed["ci_low"] <= 0.5 <= mixed["ci_high"]
    with pytest.raises(ValueError, match="same items"):
        paired_difference([1, 2], [1, 2, 3])


@pytest.mark.parametrize(
    ("n", "c", "k", "want"),
    [
        (5, 2, 1, 2 / 5),                # pass@1 = c/n
        (5, 2, 2, 1 - 3 / 10),           # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),        # 1 - C(7,5)/C(10,5) = 1 - 21/252
        (4, 0, 2, 0.0),                  # nothing passes
        (4, 3, 2, 1.0),                  # n - c < k: every k-subset holds a pass
        (3, 1, 3, 1.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError, match="at least 5"):
        pass_at_k(3, 1, 5)


def test_majority_vote():
    assert majority_vote(["4", "5", "4", None, "5", "4"]) == "4"
    assert majority_vote(["7", "9", "9", "7"]) == "7"   # tie → first seen
    assert majority_vote([None, None]) is None
