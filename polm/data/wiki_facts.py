"""`builtin:wiki-facts`: closed-book QA built by rules from the embedded Wikipedia summaries.

Each question's answer is a short span (a year, a number or a named entity) of its source summary,
which every record carries as `passage`; splits are by document, so no test passage is seen in training.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from polm.errors import PolmError

TYPES = ("year", "number", "entity")
SPLITS = ("train", "dev", "test")
FACT_KEYS = ("n", "seed", "offset", "split", "type")
SPLIT_EDGES = (80, 90)   # hash % 100 below 80: train, below 90: dev, else test

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-2][0-9])\b")
_NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:\s+(million|billion|thousand|percent))?(?![\w,])")
_ENTITY = re.compile(r"\b((?:[A-Z][a-z]+)(?:\s+(?:of\s+|de\s+|the\s+)?[A-Z][a-z]+){0,3})\b")
_LIFESPAN = re.compile(r"\(([^()]*?)\b(\d{3,4})\b[^()]*?[–-][^()]*?\b(\d{3,4})\b\s*(?:BC|AD)?\)")
_EVENT = re.compile(r"\b(founded|established|born|died|published|released|discovered|invented|formed|"
                    r"completed|opened|built)\b(?:\s+\w+){0,4}?\s+in\s+(1[0-9]{3}|20[0-2][0-9])\b")
BLANK = "____"
# Capitalised words that start clauses or name months: never an answer on their own.
_NOT_ENTITIES = frozenset(
    "The A An In It Its This These That Those He She They His Her Their On At By For From With As Of And "
    "But Or If When While After Before During Since Until Although Because However There Here Some Many "
    "Most All Each Other January February March April May June July August September October November "
    "December Monday Sunday".split())


def split_of(title: str) -> str:
    """train / dev / test from sha256('polm/wiki-facts/' + title) mod 100 (80 / 10 / 10)."""
    bucket = int.from_bytes(hashlib.sha256(f"polm/wiki-facts/{title}".encode()).digest()[:8], "big") % 100
    return "train" if bucket < SPLIT_EDGES[0] else "dev" if bucket < SPLIT_EDGES[1] else "test"


def sentences(text: str) -> list[str]:
    """The summary split after '.', '!' or '?' followed by a capital or a quote."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _leaks(answer: str, title: str, question: str) -> bool:
    """True when the answer can be read off the title or the question (word-bounded, case-folded)."""
    pattern = re.compile(rf"(?<!\w){re.escape(_norm(answer))}(?!\w)")
    return bool(pattern.search(_norm(title)) or pattern.search(_norm(question)))


def _cloze(title: str, sentence: str, start: int, end: int) -> str:
    blanked = sentence[:start] + BLANK + sentence[end:]
    return f"About {title}: \"{blanked}\" What fills the blank {BLANK}?"


def _number_aliases(answer: str) -> list[str]:
    plain = answer.replace(",", "")
    return [plain] if plain != answer else []


def _templated_years(title: str, sents: list[str]) -> list[dict[str, Any]]:
    """'In what year was T born/died?' from a lifespan '(... 1879 – ... 1955)' in the first sentence, and
    'In what year was T founded?' (etc.) from 'T ... founded ... in 1976' in a sentence naming T or 'It'."""
    out = []
    if sents:
        life = _LIFESPAN.search(sents[0])
        if life and len(life.group(2)) == 4 and len(life.group(3)) == 4:
            out.append({"question": f"In what year was {title} born?", "answer": life.group(2)})
            out.append({"question": f"In what year did {title} die?", "answer": life.group(3)})
    for sent in sents:
        event = _EVENT.search(sent)
        names_title = title.lower() in sent.lower() or sent.split()[0] in ("It", "He", "She")
        if event and names_title and event.group(1) not in ("born", "died"):
            out.append({"question": f"In what year was {title} {event.group(1)}?", "answer": event.group(2)})
            break
    return out


def _candidates(title: str, sents: list[str], kind: str):
    """(sentence, start, end, answer) spans of `kind` in document order."""
    for sent in sents:
        if kind == "year":
            matches = [(m.start(1), m.end(1), m.group(1)) for m in _YEAR.finditer(sent)]
        elif kind == "number":
            matches = [(m.start(), m.end(), m.group(0)) for m in _NUMBER.finditer(sent)
                       if not _YEAR.fullmatch(m.group(1)) and m.group(1) not in ("0", "1")]
        else:
            matches = [(m.start(1), m.end(1), m.group(1)) for m in _ENTITY.finditer(sent)
                       if m.start(1) > 0 and m.group(1) not in _NOT_ENTITIES and len(m.group(1)) > 2]
        for start, end, answer in matches:
            yield sent, start, end, answer


def facts_of(title: str, text: str) -> list[dict[str, Any]]:
    """At most one year (templated when a rule fits, else cloze), one number and one entity question
    per summary. A candidate is dropped when its answer occurs in the title or in its own question."""
    sents = sentences(text)
    facts: list[dict[str, Any]] = []
    for kind in TYPES:
        found = [q for q in _templated_years(title, sents) if not _leaks(q["answer"], title, q["question"])] \
            if kind == "year" else []
        for sent, start, end, answer in ([] if found else _candidates(title, sents, kind)):
            question = _cloze(title, sent, start, end)
            if len(sent) <= 400 and not _leaks(answer, title, question):
                found = [{"question": question, "answer": answer}]
                break
        for fact in found[:1]:
            aliases = _number_aliases(fact["answer"]) if kind == "number" else []
            facts.append({**fact, "aliases": aliases, "type": kind})
    return facts


def build_facts(documents: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Records for (title, summary) pairs, in document order; `doc_id` is the title (unique in the source)."""
    records = []
    for title, text in documents:
        split = split_of(title)
        for k, fact in enumerate(facts_of(title, text)):
            records.append({"id": f"{title}#{k}", **fact, "title": title, "doc_id": title, "passage": text,
                            "split": split, "prompt": fact["question"], "completion": fact["answer"]})
    return records


def select_facts(records: Iterable[dict[str, Any]], query: dict[str, Any],
                 where: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records of the query's `split` and `type` (comma lists; default all), and the query's
    remaining subset keys (n, seed, offset) for polm.data.builtin.seeded_subset."""
    unknown = sorted(set(query) - set(FACT_KEYS))
    if unknown:
        raise PolmError(f"unknown query key '{unknown[0]}' for builtin:wiki-facts", where=where,
                        fix=f"Valid keys: {', '.join(FACT_KEYS)}.")
    rest = dict(query)
    splits = _choices(rest.pop("split", "all"), SPLITS, "split", where)
    types = _choices(rest.pop("type", "all"), TYPES, "type", where)
    return [dict(r) for r in records if r["split"] in splits and r["type"] in types], rest


def _choices(value: Any, valid: tuple[str, ...], key: str, where: str) -> set[str]:
    wanted = set(valid) if value == "all" else {v.strip() for v in str(value).split(",")}
    bad = sorted(wanted - set(valid))
    if bad:
        raise PolmError(f"{key}='{bad[0]}' is not one of {', '.join(valid)}", where=where,
                        fix=f"Write {key}={valid[0]} (a comma list, or all).")
    return wanted
