"""QA facts: checks with one clear error each, disjoint splits, exemplars, prompts and SFT records."""

from __future__ import annotations

import json
import random

import pytest

from polm.errors import PolmError
from polm.knowledge.facts import (
    check_disjoint,
    draw_exemplars,
    exemplar_pools,
    fewshot_prompt,
    is_correct,
    load_facts,
    sft_records,
)


def fact(q, a, t="year", s="train", **extra):
    return {"question": q, "answer": a, "type": t, "split": s, **extra}


def write(tmp_path, records) -> str:
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_load_facts_reads_any_reference_and_keeps_optional_fields(tmp_path):
    records = [fact("When?", "1990", aliases=["'90"], doc_id="d1", title="T"), fact("Who?", "Ada", "entity", "dev")]
    assert load_facts(write(tmp_path, records)) == records
    csv = tmp_path / "facts.csv"
    csv.write_text("question,answer,type,split\nWhen?,1990,year,test\n")
    assert load_facts(str(csv))[0]["split"] == "test"


@pytest.mark.parametrize("record, message", [
    ({"question": "When?", "type": "year", "split": "train"}, "lacks the field(s) ['answer']"),
    (fact("When?", ""), "lacks the field(s) ['answer']"),
    (fact("When?", "1990", t="date"), "unknown fact type 'date'"),
    (fact("When?", "1990", s="validation"), "unknown split 'validation'"),
    (fact("When?", "1990", aliases="1990"), "'aliases' must be a list"),
])
def test_bad_fact_is_one_error_naming_the_line(tmp_path, record, message):
    ref = write(tmp_path, [fact("ok?", "1"), record])
    with pytest.raises(PolmError) as err:
        load_facts(ref)
    assert message in err.value.message and f"{ref}:2" in err.value.message


def test_overlapping_splits_are_refused():
    check_disjoint([fact("A?", "1", s="dev", doc_id="x"), fact("B?", "2", s="test", doc_id="y")], ("dev", "test"))
    with pytest.raises(PolmError, match="dev and test splits overlap.*question 'b'"):
        check_disjoint([fact("The B?", "1", s="dev"), fact("b", "2", s="test")], ("dev", "test"))
    with pytest.raises(PolmError, match="doc_id 'x'"):
        check_disjoint([fact("A?", "1", s="dev", doc_id="x"), fact("B?", "2", s="test", doc_id="x")], ("dev", "test"))


def test_exemplars_are_same_type_never_the_probed_fact_and_pool_size_is_checked():
    pool = [fact(f"Q{i}?", str(1900 + i), s="dev") for i in range(5)] + [fact("Who?", "Ada", "entity", "dev")]
    pools = exemplar_pools(pool, 4, {"year"})
    probed = fact("Q0?", "1999")                       # same question as pool[0]
    for seed in range(20):
        shots = draw_exemplars(probed, pools["year"], 4, random.Random(seed))
        assert len(shots) == 4 and all(s["type"] == "year" and s["question"] != "Q0?" for s in shots)
    same_answer = fact("Other?", "1901")                # same answer as pool[1]
    assert all(s["answer"] != "1901" for s in draw_exemplars(same_answer, pools["year"], 4, random.Random(0)))
    with pytest.raises(PolmError, match="1 fact\\(s\\) of type 'entity', and 4-shot prompts need at least 5"):
        exemplar_pools(pool, 4, {"year", "entity"})
    with pytest.raises(PolmError, match="only 3 exemplar"):
        draw_exemplars(fact("Q0?", "1901"), pools["year"], 4, random.Random(0))


def test_prompt_records_and_exact_match():
    shots = [fact("A?", "1"), fact("B?", "2")]
    assert fewshot_prompt(fact("C?", "3"), shots) == "Q: A?\nA: 1\n\nQ: B?\nA: 2\n\nQ: C?\nA:"
    assert sft_records([fact("C?", 3)]) == [{"prompt": "Q: C?\nA:", "completion": " 3"}]
    f = fact("Capital?", "Paris", "entity", aliases=["City of Light"])
    assert is_correct("  the Paris.", f) and is_correct("city of light", f)
    assert not is_correct("Paris, France", f) and not is_correct("", fact("?", "."))
