"""Pure per-question metrics of retrieval and of cited answers (SQuAD normalisation throughout).

Retrieval: recall@k and reciprocal rank of the gold document. Answers: exact match and token F1 against
the gold answer and its aliases; citation precision / recall (does a cited passage contain the
answer?) and a deterministic faithfulness (the answer's content words found in the cited passages).
"""

from __future__ import annotations

from collections.abc import Sequence

from polm.verify import normalize_text, token_f1

# Function words that carry no claim; faithfulness counts only the other answer tokens.
STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or is was were are be been it its this that these those "
    "as which who whom whose what when where why how than then there their they he she his her i you we".split())


def recall_at_k(ranked: Sequence[str], gold: str, k: int) -> float:
    """1.0 when `gold` is among the first k ranked ids, else 0.0."""
    return float(gold in list(ranked)[:k])


def reciprocal_rank(ranked: Sequence[str], gold: str) -> float:
    """1 / (1-based rank of `gold`), 0.0 when it was not retrieved (MRR is the mean over questions)."""
    ranked = list(ranked)
    return 1.0 / (ranked.index(gold) + 1) if gold in ranked else 0.0


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference."""
    return max(float(normalize_text(prediction) == normalize_text(a)) for a in answers)


def best_f1(prediction: str, answers: Sequence[str]) -> float:
    """Token F1 (2PR/(P+R) over normalised tokens) against the best-matching reference."""
    return max(token_f1(prediction, a) for a in answers)


def contains_answer(passage: str, answers: Sequence[str]) -> bool:
    """A normalised reference occurs in the normalised passage as whole tokens."""
    text = f" {normalize_text(passage)} "
    return any(f" {normalize_text(a)} " in text for a in answers if normalize_text(a))


def citation_scores(cited: Sequence[int], passages: Sequence[str], answers: Sequence[str]) -> dict[str, float | None]:
    """Citations are 1-based passage numbers. precision = |cited ∩ supporting| / |cited| (0 when nothing
    is cited); recall = |cited ∩ supporting| / |supporting|, None when no shown passage supports the
    answer (left out of the mean). Supporting = contains a reference answer. Out-of-range ids count as
    unsupported citations."""
    cited_set = sorted(set(cited))
    supporting = {i + 1 for i, p in enumerate(passages) if contains_answer(p, answers)}
    hit = len([c for c in cited_set if c in supporting])
    precision = hit / len(cited_set) if cited_set else 0.0
    recall = hit / len(supporting) if supporting else None
    return {"citation_precision": precision, "citation_recall": recall}


def faithfulness(answer: str, cited_passages: Sequence[str]) -> float | None:
    """Fraction of the answer's content tokens (normalised, minus STOPWORDS) present in the cited passages;
    0.0 when the answer has content but cites nothing, None when it has no content token."""
    content = [t for t in normalize_text(answer).split() if t not in STOPWORDS]
    if not content:
        return None
    context = set(normalize_text(" ".join(cited_passages)).split())
    return sum(t in context for t in content) / len(content)
