"""Retrieval and answer metrics by hand."""

from __future__ import annotations

import pytest

from polm.rag.metrics import (
    best_f1,
    citation_scores,
    contains_answer,
    exact_match,
    faithfulness,
    recall_at_k,
    reciprocal_rank,
)


def test_recall_at_k_and_reciprocal_rank():
    ranked = ["b", "a", "c"]
    assert [recall_at_k(ranked, "a", k) for k in (1, 2, 5)] == [0.0, 1.0, 1.0]
    assert reciprocal_rank(ranked, "a") == 0.5
    assert reciprocal_rank(ranked, "c") == pytest.approx(1 / 3)
    assert reciprocal_rank(ranked, "z") == 0.0
    # MRR over three questions with gold at ranks 1, 2 and missing: (1 + 1/2 + 0) / 3 = 0.5
    assert sum(reciprocal_rank(ranked, g) for g in ("b", "a", "z")) / 3 == 0.5


def test_exact_match_and_f1_use_squad_normalisation_and_aliases():
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("12500", ["12,500", "12500"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    # pred {paris, france}, ref {paris}: P = 1/2, R = 1, F1 = 2/3
    assert best_f1("Paris, France", ["Paris", "Lyon"]) == pytest.approx(2 / 3)


def test_contains_answer_matches_whole_tokens():
    assert contains_answer("Founded in 1949 by W.", ["1949"])
    assert not contains_answer("Founded in 19490.", ["1949"])


def test_citation_precision_and_recall_by_hand():
    passages = ["It was founded in 1949.", "Nothing here.", "Also 1949 appears."]
    # cited {1, 2}: supporting {1, 3}; precision 1/2, recall 1/2
    assert citation_scores([1, 2, 2], passages, ["1949"]) == {"citation_precision": 0.5, "citation_recall": 0.5}
    assert citation_scores([], passages, ["1949"]) == {"citation_precision": 0.0, "citation_recall": 0.0}
    assert citation_scores([9], passages, ["1949"])["citation_precision"] == 0.0
    assert citation_scores([2], passages, ["1800"]) == {"citation_precision": 0.0, "citation_recall": None}


def test_faithfulness_counts_content_tokens_in_cited_passages():
    # content tokens of "the Acme Corporation of Ohio": acme, corporation, ohio; 2 of 3 in the context
    assert faithfulness("the Acme Corporation of Ohio", ["Acme Corporation is big."]) == pytest.approx(2 / 3)
    assert faithfulness("Ohio", []) == 0.0
    assert faithfulness("the of", ["anything"]) is None
