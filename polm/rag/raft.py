"""RAFT training data (Zhang et al. 2024, "RAFT: Adapting Language Model to Domain Specific RAG").

Per question: the oracle passage plus k distractors (retrieved hard negatives from other documents, or
random documents), shuffled; with probability 1 - P the oracle is left out. The target is a short
chain of thought quoting the oracle sentence that holds the answer (##begin_quote## ... ##end_quote##),
then 'Answer: X [n]' citing the oracle's number; without the oracle it says so and answers from memory.
"""

from __future__ import annotations

import random
from typing import Any

from polm.data.wiki_facts import sentences
from polm.rag.answer import rag_prompt
from polm.rag.index import RagIndex
from polm.rag.metrics import contains_answer
from polm.rag.retrieve import retrieve

BEGIN_QUOTE, END_QUOTE = "##begin_quote##", "##end_quote##"


def evidence_sentence(passage: str, answers: list[str]) -> str:
    """The first sentence of `passage` containing an answer (the whole passage when none does)."""
    return next((s for s in sentences(passage) if contains_answer(s, answers)), passage)


def raft_completion(answers: list[str], oracle_text: str | None, oracle_number: int | None) -> str:
    """The chain-of-thought target: a quote of the evidence, then the cited answer."""
    if oracle_text is None or oracle_number is None:
        return f"None of the passages states this; from memory:\nAnswer: {answers[0]}"
    quote = evidence_sentence(oracle_text, answers)
    return (f"Passage [{oracle_number}] says: {BEGIN_QUOTE}{quote}{END_QUOTE} "
            f"So the answer is {answers[0]}.\nAnswer: {answers[0]} [{oracle_number}]")


def distractor_pool(index: RagIndex, questions: list[dict[str, Any]], kind: str, retriever: str, k: int,
                    rng: random.Random) -> list[list[tuple[str, str]]]:
    """k (title, text) distractors per question, never from the question's own document."""
    if kind == "retrieved":
        hits = retrieve(index, [q["question"] for q in questions], k + 8, retriever)
        return [[(h.chunk.title, h.chunk.text) for h in row if h.chunk.doc_id != q["doc_id"]][:k]
                for q, row in zip(questions, hits)]
    chunks = [index.chunks[i] for i in sorted(index.chunks)]
    out = []
    for q in questions:
        picks = [c for c in rng.sample(chunks, min(len(chunks), k + 2)) if c.doc_id != q["doc_id"]][:k]
        out.append([(c.title, c.text) for c in picks])
    return out


def raft_records(index: RagIndex, questions: list[dict[str, Any]], *, kind: str = "retrieved",
                 retriever: str = "bm25", k: int = 4, oracle_p: float = 0.8, seed: int = 0,
                 source: str = "") -> list[dict[str, Any]]:
    """SFT records {prompt, completion, provenance} for `polm sft`, in question order, seeded."""
    rng = random.Random(seed)
    pools = distractor_pool(index, questions, kind, retriever, k, rng)
    out = []
    for q, distractors in zip(questions, pools):
        keep_oracle = rng.random() < oracle_p
        oracle = (q.get("title") or "", q["passage"])
        shown = [*distractors, oracle] if keep_oracle else list(distractors)
        rng.shuffle(shown)
        number = shown.index(oracle) + 1 if keep_oracle else None
        out.append({"prompt": rag_prompt(q["question"], shown),
                    "completion": raft_completion(q["answers"], oracle[1] if keep_oracle else None, number),
                    "provenance": {"builder": "raft", "questions": source, "question_id": q["id"],
                                   "doc_id": q["doc_id"], "oracle": keep_oracle, "oracle_position": number,
                                   "distractors": kind, "num_distractors": len(distractors), "seed": seed}})
    return out
