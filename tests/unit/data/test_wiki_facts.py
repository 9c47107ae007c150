"""builtin:wiki-facts on hand-built summaries: templated and cloze questions, leaks refused, splits by document."""

from __future__ import annotations

import pytest

from polm.data.wiki_facts import build_facts, facts_of, select_facts, sentences, split_of
from polm.errors import PolmError

EINSTEIN = ("Albert Einstein (14 March 1879 – 18 April 1955) was a German-born theoretical physicist. "
            "He developed the theory of relativity.")
ACME = "Acme Corporation is a company based in Springfield. It was founded by Wile Coyote in 1949. It employs 12,500 people."


def test_lifespan_gives_born_year_then_number_and_entity_cloze():
    facts = facts_of("Albert Einstein", EINSTEIN)
    assert [(f["type"], f["question"], f["answer"]) for f in facts] == [
        ("year", "In what year was Albert Einstein born?", "1879"),
        ("number", 'About Albert Einstein: "Albert Einstein (____ March 1879 – 18 April 1955) was a German-born '
                   'theoretical physicist." What fills the blank ____?', "14"),
        ("entity", 'About Albert Einstein: "Albert Einstein (14 March 1879 – 18 April 1955) was a ____-born '
                   'theoretical physicist." What fills the blank ____?', "German"),
    ]


def test_event_year_template_and_number_aliases():
    facts = {f["type"]: f for f in facts_of("Acme Corporation", ACME)}
    assert facts["year"]["question"] == "In what year was Acme Corporation founded?"
    assert facts["year"]["answer"] == "1949"
    assert (facts["number"]["answer"], facts["number"]["aliases"]) == ("12,500", ["12500"])
    assert facts["entity"]["answer"] == "Springfield"


def test_an_answer_in_the_title_or_question_is_never_asked():
    facts = facts_of("Year 1990", "Year 1990 was a year. The 1990 World Cup was held in Italy.")
    assert [(f["type"], f["answer"]) for f in facts] == [("entity", "World Cup")]
    for title, text in (("Albert Einstein", EINSTEIN), ("Acme Corporation", ACME)):
        for f in facts_of(title, text):
            assert f["answer"].lower() not in title.lower()
            assert f["answer"] not in f["question"].replace("____", "")


def test_records_carry_passage_split_by_document_and_ids():
    records = build_facts([("Albert Einstein", EINSTEIN), ("Acme Corporation", ACME)])
    assert len(records) == 6
    assert {r["split"] for r in records if r["doc_id"] == "Acme Corporation"} == {split_of("Acme Corporation")}
    first = records[0]
    assert first["passage"] == EINSTEIN and first["title"] == first["doc_id"] == "Albert Einstein"
    assert first["id"] == "Albert Einstein#0" and first["prompt"] == first["question"]
    assert first["completion"] == first["answer"]


def test_split_is_a_fixed_hash_of_the_title():
    assert split_of("Albert Einstein") == "train" and split_of("Acme Corporation") == "test"
    assert split_of("Albert Einstein") == split_of("Albert Einstein")


def test_sentences_split_on_terminal_punctuation_before_a_capital():
    assert sentences("It is 3.5 m long. It was built in 1900! Why? no.") == [
        "It is 3.5 m long.", "It was built in 1900!", "Why? no."]


def test_query_filters_split_and_type():
    records = build_facts([("Albert Einstein", EINSTEIN), ("Acme Corporation", ACME)])
    test_years, rest = select_facts(records, {"split": "test", "type": "year", "n": 1}, where="ref")
    assert [(r["doc_id"], r["type"]) for r in test_years] == [("Acme Corporation", "year")] and rest == {"n": 1}
    chosen, _ = select_facts(records, {"type": "number,entity"}, where="ref")
    assert [r["type"] for r in chosen] == ["number", "entity", "number", "entity"]
    with pytest.raises(PolmError, match="split='validation' is not one of train, dev, test"):
        select_facts(records, {"split": "validation"}, where="ref")
    with pytest.raises(PolmError, match="unknown query key 'size'"):
        select_facts(records, {"size": 3}, where="ref")


def test_builtin_reference_filters_and_subsets(monkeypatch):
    import polm.data.builtin as builtin

    records = tuple(build_facts([("Albert Einstein", EINSTEIN), ("Acme Corporation", ACME)]))
    monkeypatch.setattr(builtin, "_wiki_facts", lambda: records)
    assert len(builtin.load_builtin("builtin:wiki-facts")) == 6
    picked = builtin.load_builtin("builtin:wiki-facts?split=train&n=2&seed=1")
    assert len(picked) == 2 and {r["doc_id"] for r in picked} == {"Albert Einstein"}
