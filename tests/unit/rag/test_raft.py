"""RAFT records: oracle kept with probability P, distractors from other documents, quoted CoT target."""

from __future__ import annotations

from polm.rag.answer import parse_citations
from polm.rag.embedders import HashingEmbedder
from polm.rag.index import DenseConfig, RagIndex
from polm.rag.raft import BEGIN_QUOTE, END_QUOTE, evidence_sentence, raft_completion, raft_records

DOCS = [(f"d{i}", f"T{i}", f"Document {i} talks about topic {i}. It was written in {1900 + i}.") for i in range(8)]
QUESTIONS = [{"id": f"q{i}", "question": f"In what year was document {i} written?", "answers": [str(1900 + i)],
              "doc_id": f"d{i}", "passage": DOCS[i][2], "title": f"T{i}"} for i in range(8)]


def make_index() -> RagIndex:
    idx = RagIndex(HashingEmbedder(64), dense=DenseConfig(embedder="hashing", embedder_options={"dim": 64}))
    idx.add(DOCS)
    return idx


def test_completion_quotes_the_evidence_sentence_and_cites_the_oracle():
    assert evidence_sentence(DOCS[3][2], ["1903"]) == "It was written in 1903."
    text = raft_completion(["1903"], DOCS[3][2], 2)
    assert text == (f"Passage [2] says: {BEGIN_QUOTE}It was written in 1903.{END_QUOTE} So the answer is 1903.\n"
                    "Answer: 1903 [2]")
    assert raft_completion(["1903"], None, None).endswith("Answer: 1903")


def test_oracle_position_distractors_and_probability():
    records = raft_records(make_index(), QUESTIONS, kind="retrieved", retriever="bm25", k=3, oracle_p=1.0, seed=0)
    for q, rec in zip(QUESTIONS, records):
        prov = rec["provenance"]
        assert prov["oracle"] and prov["num_distractors"] == 3 and prov["doc_id"] == q["doc_id"]
        assert rec["prompt"].count(q["passage"]) == 1
        assert f"[{prov['oracle_position']}] ({q['title']}) {q['passage']}" in rec["prompt"]
        assert parse_citations(rec["completion"].splitlines()[-1]) == [prov["oracle_position"]]
    dropped = raft_records(make_index(), QUESTIONS, kind="random", k=2, oracle_p=0.0, seed=0)
    assert not any(r["provenance"]["oracle"] for r in dropped)
    assert all(q["passage"] not in r["prompt"] for q, r in zip(QUESTIONS, dropped))


def test_records_are_seeded():
    a = raft_records(make_index(), QUESTIONS, kind="random", k=2, oracle_p=0.5, seed=3)
    b = raft_records(make_index(), QUESTIONS, kind="random", k=2, oracle_p=0.5, seed=3)
    assert a == b
    assert 0 < sum(r["provenance"]["oracle"] for r in a) < len(a)
