"""Eval pieces on hand-made questions: question loading and refusals, retrieval rows, answer scoring."""

from __future__ import annotations

import json

import pytest

from polm.errors import PolmError
from polm.rag.evaluate import (
    compare_modes,
    compare_to_baseline,
    load_questions,
    passages_for,
    retrieval_row,
    score_answer,
    summarize_records,
)


def test_load_questions_from_jsonl_with_aliases(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "Q?", "answer": "12,500", "aliases": ["12500"], "doc_id": "d1",
                                "passage": "P", "title": "T"}) + "\n\n" + json.dumps({"question": "R?", "answer": 7}) + "\n")
    first, second = load_questions(str(path))
    assert first == {"id": "0", "question": "Q?", "answers": ["12,500", "12500"], "doc_id": "d1", "passage": "P",
                     "title": "T"}
    assert second["answers"] == ["7"] and second["doc_id"] is None


def test_question_sets_without_answers_or_questions_are_refused(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "Q?"}) + "\n")
    with pytest.raises(PolmError, match=r"q.jsonl:1: the question has no 'answer'"):
        load_questions(str(path))
    path.write_text(json.dumps({"answer": "x"}) + "\n")
    with pytest.raises(PolmError, match="the record has no 'question'"):
        load_questions(str(path))
    with pytest.raises(PolmError, match="does not exist"):
        load_questions(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PolmError, match="is empty"):
        load_questions(str(tmp_path / "empty.jsonl"))


def test_retrieval_row_by_hand():
    questions = [{"doc_id": "a"}, {"doc_id": "b"}, {"doc_id": None}]
    row = retrieval_row([["a", "b"], ["c", "d", "b"], ["a"]], questions, [1, 3])
    assert row["recall@1"]["value"] == 0.5 and row["recall@3"]["value"] == 1.0
    assert row["mrr"]["value"] == pytest.approx((1 + 1 / 3) / 2) and row["mrr"]["n"] == 2
    with pytest.raises(PolmError, match="no question names its gold document"):
        retrieval_row([["a"]], [{"doc_id": None}], [1])


def test_score_answer_with_and_without_passages():
    q = {"id": "0", "answers": ["1949"], "passage": "Founded in 1949.", "title": "Acme"}
    passages = [("X", "Nothing."), ("Acme", "Acme was founded in 1949.")]
    scored = score_answer("Passage [2] says 1949.\nAnswer: 1949 [2]", q, passages)
    assert scored == {"exact_match": 1.0, "f1": 1.0, "citation_precision": 1.0, "citation_recall": 1.0,
                      "faithfulness": 1.0, "answer_in_context": 1.0}
    assert score_answer("Answer: 1950", q, []) == {"exact_match": 0.0, "f1": 0.0}
    assert passages_for("oracle", q, []) == [("Acme", "Founded in 1949.")]
    with pytest.raises(PolmError, match="has no 'passage' for the oracle mode"):
        passages_for("oracle", {"id": "9", "passage": None}, [])


def test_summaries_skip_undefined_values_and_pair_modes():
    closed = [{"metrics": {"exact_match": 0.0, "f1": 0.5}}, {"metrics": {"exact_match": 1.0, "f1": 1.0}}]
    rag = [{"metrics": {"exact_match": 1.0, "f1": 1.0, "citation_recall": None}},
           {"metrics": {"exact_match": 1.0, "f1": 1.0, "citation_recall": 1.0}}]
    summary = summarize_records(rag)
    assert summary["citation_recall"]["n"] == 1 and summary["exact_match"]["value"] == 1.0
    diff = compare_modes({"closed_book": closed, "rag": rag})["rag - closed_book"]
    assert diff["exact_match"]["diff"] == 0.5 and diff["f1"]["diff"] == 0.25


def _write_run(folder, model, records):
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"config": {"model": model}}))
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_run_is_paired_with_a_baseline_run_by_question_id(tmp_path):
    """Baseline records in another order still pair by id: ΔEM = (1 - 0 + 1 - 1) / 2, ΔF1 = (0.5 + 0.5) / 2."""
    _write_run(tmp_path / "base", "base-model", [
        {"id": "q2", "mode": "rag", "metrics": {"exact_match": 1.0, "f1": 0.5}},
        {"id": "q1", "mode": "rag", "metrics": {"exact_match": 0.0, "f1": 0.5}},
        {"id": "q1", "mode": "closed_book", "metrics": {"exact_match": 0.0, "f1": 0.0}}])
    rag = [{"id": "q1", "mode": "rag", "metrics": {"exact_match": 1.0, "f1": 1.0}},
           {"id": "q2", "mode": "rag", "metrics": {"exact_match": 1.0, "f1": 1.0}}]
    out = compare_to_baseline({"rag": rag}, tmp_path / "base")
    diff = out["rag - baseline rag"]
    assert diff["baseline_model"] == "base-model"
    assert diff["exact_match"]["diff"] == 0.5 and diff["f1"]["diff"] == 0.5 and diff["f1"]["n"] == 2
    with pytest.raises(PolmError, match="question 'q3' .* is not in baseline"):
        compare_to_baseline({"rag": [*rag, {"id": "q3", "mode": "rag", "metrics": {}}]}, tmp_path / "base")
    with pytest.raises(PolmError, match="shares no answer mode"):
        compare_to_baseline({"oracle": rag}, tmp_path / "base")
    with pytest.raises(PolmError, match="is not a `polm rag eval` output"):
        compare_to_baseline({"rag": rag}, tmp_path / "nothing")
