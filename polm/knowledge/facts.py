"""Closed-book QA facts for knowledge probing: loading and checking records, same-type exemplar pools,
the k-shot probe prompt, and the prompt/completion records a fine-tune trains on.

A fact is a record with `question`, `answer`, `type` (year | number | entity) and `split`
(train | dev | test | probe); `aliases`, `title`, `doc_id` and `passage` are optional.
"""

from __future__ import annotations

import random
from typing import Any

from polm.errors import PolmError
from polm.verify import normalize_text

TYPES = ("year", "number", "entity")
SPLITS = ("train", "dev", "test", "probe")
REQUIRED = ("question", "answer", "type", "split")


def load_facts(ref: str) -> list[dict]:
    """Every record of `ref` (any data reference polm reads) as a checked fact, in order; one PolmError
    naming the record and the field for a missing answer, an unknown type or split, or a wrong type."""
    from polm.data.loaders import read_items

    facts = [check_fact(item, where) for where, item in read_items(ref)]
    if not facts:
        raise PolmError(f"data source '{ref}' holds no QA fact", fix="Check that the file holds records.")
    return facts


def check_fact(record: Any, where: str) -> dict:
    """`record` itself when it is a valid fact, else PolmError at `where`."""
    if isinstance(record, PolmError):
        raise record
    if not isinstance(record, dict):
        raise PolmError(f"a QA fact must be a JSON object, got {type(record).__name__}", where=where)
    missing = [k for k in REQUIRED if k not in record or record[k] in (None, "")]
    if missing:
        raise PolmError(f"QA fact lacks the field(s) {missing}", where=where,
                        fix="Each fact needs question, answer, type (year|number|entity) and split "
                            "(train|dev|test|probe).")
    for key in ("question", "answer"):
        if not isinstance(record[key], (str, int, float)):
            raise PolmError(f"QA fact field '{key}' must be a string, got {type(record[key]).__name__}", where=where)
    if record["type"] not in TYPES:
        raise PolmError(f"unknown fact type '{record['type']}'", where=where, fix=f"Use one of {list(TYPES)}.")
    if record["split"] not in SPLITS:
        raise PolmError(f"unknown split '{record['split']}'", where=where, fix=f"Use one of {list(SPLITS)}.")
    aliases = record.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, (str, int, float)) for a in aliases):
        raise PolmError("QA fact field 'aliases' must be a list of strings", where=where)
    return record


def fact_key(fact: dict) -> str:
    """The identity of a fact across probes: its question and answer."""
    return f"{fact['question']}\t{fact['answer']}"


def gold_answers(fact: dict) -> list[str]:
    """The answer and its aliases, as strings, answer first."""
    return [str(fact["answer"]), *(str(a) for a in fact.get("aliases") or [])]


def is_correct(prediction: str, fact: dict) -> bool:
    """Exact match after SQuAD normalisation against the answer or any alias."""
    pred = normalize_text(prediction)
    return bool(pred) and any(pred == normalize_text(g) for g in gold_answers(fact))


def split_of(facts: list[dict], split: str) -> list[dict]:
    return [f for f in facts if f["split"] == split]


def check_disjoint(facts: list[dict], splits: tuple[str, ...]) -> None:
    """PolmError when two of `splits` share a question (normalised) or a source document (`doc_id`)."""
    seen: dict[tuple[str, str], str] = {}
    for fact in facts:
        if fact["split"] not in splits:
            continue
        keys = [("question", normalize_text(str(fact["question"])))]
        if fact.get("doc_id") not in (None, ""):
            keys.append(("doc_id", str(fact["doc_id"])))
        for key in keys:
            if not key[1]:
                continue
            other = seen.setdefault(key, fact["split"])
            if other != fact["split"]:
                raise PolmError(f"the {other} and {fact['split']} splits overlap: both hold the {key[0]} "
                                f"'{key[1]}'", fix="Split the facts by document so that no question or source "
                                                   "document is in two splits.")


def exemplar_pools(pool: list[dict], k: int, types: set[str]) -> dict[str, list[dict]]:
    """The exemplar pool by type; PolmError when a needed type has fewer than k + 1 exemplars (a probed
    fact may coincide with one, which is then left out)."""
    by_type: dict[str, list[dict]] = {t: [] for t in TYPES}
    for fact in pool:
        by_type[fact["type"]].append(fact)
    for t in sorted(types):
        if len(by_type[t]) < k + 1:
            raise PolmError(f"the exemplar pool has {len(by_type[t])} fact(s) of type '{t}', and {k}-shot prompts "
                            f"need at least {k + 1}", fix="Lower probe.k_shot, or add exemplar facts of that type.")
    return by_type


def draw_exemplars(fact: dict, pool: list[dict], k: int, rng: random.Random) -> list[dict]:
    """k exemplars from the same-type `pool`, none with the probed fact's question or answer."""
    q, a = normalize_text(str(fact["question"])), normalize_text(str(fact["answer"]))
    usable = [e for e in pool if normalize_text(str(e["question"])) != q and normalize_text(str(e["answer"])) != a]
    if len(usable) < k:
        raise PolmError(f"only {len(usable)} exemplar(s) of type '{fact['type']}' differ from the fact "
                        f"'{fact['question']}' in question and answer; {k} are needed",
                        fix="Lower probe.k_shot, or add exemplar facts of that type.")
    return rng.sample(usable, k)


def qa_prompt(question: str) -> str:
    """The zero-shot prompt of a question; fine-tunes train on it and the k-shot prompt ends with it."""
    return f"Q: {question}\nA:"


def fewshot_prompt(fact: dict, exemplars: list[dict]) -> str:
    """'Q: q1\\nA: a1\\n\\n' per exemplar, then the probed question's 'Q: q\\nA:'."""
    shots = "".join(f"{qa_prompt(str(e['question']))} {e['answer']}\n\n" for e in exemplars)
    return shots + qa_prompt(str(fact["question"]))


def sft_records(facts: list[dict]) -> list[dict]:
    """prompt/completion records of facts: 'Q: q\\nA:' -> ' answer' (the trainer adds EOS)."""
    return [{"prompt": qa_prompt(str(f["question"])), "completion": f" {f['answer']}"} for f in facts]


def answer_text(completion: str) -> str:
    """A generated answer: the text before the first newline, stripped."""
    return completion.split("\n", 1)[0].strip()
