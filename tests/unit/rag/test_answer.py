"""Prompt layout, citation parsing and the short answer of a response."""

from __future__ import annotations

from polm.rag.answer import RAG_INSTRUCTION, answer_text, closed_book_prompt, parse_citations, rag_prompt


def test_rag_prompt_numbers_passages_from_one():
    prompt = rag_prompt("Who?", [("T1", "first text"), ("", "second text")])
    assert prompt == f"{RAG_INSTRUCTION}\n\n[1] (T1) first text\n[2] second text\n\nQuestion: Who?"
    assert closed_book_prompt("Who?").endswith("\n\nQuestion: Who?")


def test_parse_citations_in_order_each_once():
    assert parse_citations("See [2] and [1], again [2]. Answer: X [3]") == [2, 1, 3]
    assert parse_citations("no citation, [a] [ 1 ]") == []


def test_answer_text_takes_the_answer_line_without_citations():
    assert answer_text("Passage [1] says so.\nAnswer: 1949 [1]") == "1949"
    assert answer_text("Springfield [2][3]\nmore text") == "Springfield"
