"""SliCK categories, transition matrices and knowledge metrics, against values derived by hand."""

from __future__ import annotations

import math

import pytest

from polm.knowledge.categories import (
    CATEGORIES,
    categorize,
    category_counts,
    format_matrix,
    knowledge_metrics,
    relative_gain,
    retained_accuracy,
    transition_matrix,
    transition_summary,
)


@pytest.mark.parametrize("p_greedy, p_sample, expected", [
    (1.0, None, "HighlyKnown"),       # greedy correct on 10/10 prompts: samples are not read
    (1.0, 0.0, "HighlyKnown"),
    (0.1, None, "MaybeKnown"),        # 1/10 prompts
    (0.9, 0.0, "MaybeKnown"),
    (0.0, 1 / 160, "WeaklyKnown"),    # one correct sample out of 10 x 16
    (0.0, 0.5, "WeaklyKnown"),
    (0.0, 0.0, "Unknown"),
])
def test_categories_from_constructed_probabilities(p_greedy, p_sample, expected):
    assert categorize(p_greedy, p_sample) == expected


def test_greedy_never_correct_needs_the_sampled_probability():
    with pytest.raises(ValueError):
        categorize(0.0, None)
    with pytest.raises(ValueError):
        categorize(1.5, 0.0)


def test_transition_matrix_by_hand():
    before = {"a": "HighlyKnown", "b": "HighlyKnown", "c": "MaybeKnown", "d": "Unknown", "e": "WeaklyKnown",
              "only-before": "Unknown"}
    after = {"a": "HighlyKnown", "b": "MaybeKnown", "c": "HighlyKnown", "d": "HighlyKnown", "e": "Unknown",
             "only-after": "HighlyKnown"}
    m = transition_matrix(before, after)
    # 5 shared facts: a HK->HK, b HK->MK, c MK->HK, d UNK->HK, e WK->UNK
    assert m["HighlyKnown"] == {"HighlyKnown": 1, "MaybeKnown": 1, "WeaklyKnown": 0, "Unknown": 0}
    assert m["MaybeKnown"]["HighlyKnown"] == 1 and m["Unknown"]["HighlyKnown"] == 1
    assert m["WeaklyKnown"]["Unknown"] == 1
    assert sum(sum(r.values()) for r in m.values()) == 5
    s = transition_summary(m)
    assert s == {"facts": 5, "unchanged": 1, "upgraded": 2, "downgraded": 2, "highly_known_lost": 1,
                 "agreement": 0.2}
    text = format_matrix(m).splitlines()
    assert len(text) == 5 and text[1].split() == ["HK", "1", "1", "0", "0"]


def test_knowledge_metrics_and_relative_gain_by_hand():
    before = {"a": "HighlyKnown", "b": "HighlyKnown", "c": "MaybeKnown", "d": "Unknown"}
    after = {"a": "HighlyKnown", "b": "Unknown", "c": "HighlyKnown", "d": "HighlyKnown"}
    # HK before {a, b}; HK after {a, c, d}: acquired 3, gained 3 - 2 = 1, new {c, d}, forgotten {b}
    assert knowledge_metrics(before, after) == {"facts": 4, "highly_known_before": 2, "acquired": 3, "gained": 1,
                                                "new": 2, "forgotten": 1}
    assert relative_gain(62, 50) == pytest.approx(0.24)
    assert math.isnan(relative_gain(3, 0))


def test_counts_cover_every_category():
    assert category_counts(["Unknown", "Unknown", "MaybeKnown"]) == dict(zip(CATEGORIES, [0, 1, 0, 2]))


def test_retained_accuracy_by_hand():
    before = {"a": "HighlyKnown", "b": "HighlyKnown", "c": "HighlyKnown", "d": "MaybeKnown",
              "only-before": "HighlyKnown"}
    after = {"a": 1.0, "b": 0.7, "c": 0.0, "d": 1.0, "only-after": 1.0}
    # HighlyKnown before and probed after: a, b, c (in key order); d was not known, only-before not re-probed
    scores = retained_accuracy(before, after)
    assert scores == [1.0, 0.7, 0.0] and sum(scores) / 3 == pytest.approx(1.7 / 3)
    assert retained_accuracy({"d": "MaybeKnown"}, {"d": 1.0}) == []
