"""SliCK knowledge categories (Gekhman et al. 2024) as pure functions of a fact's correctness
probabilities, the transition matrix between two probes, and the knowledge metrics of a fine-tune.

P(T=0) is the fraction of the fact's k-shot prompts whose greedy answer is correct; P(T>0) the fraction
of sampled answers (T > 0) that are correct, over all prompts.
"""

from __future__ import annotations

from collections.abc import Mapping

CATEGORIES = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")
KNOWN_ORDER = {c: i for i, c in enumerate(CATEGORIES)}   # 0 = most known


def categorize(p_greedy: float, p_sample: float | None) -> str:
    """HighlyKnown: P(T=0) = 1; MaybeKnown: 0 < P(T=0) < 1; WeaklyKnown: P(T=0) = 0 and P(T>0) > 0;
    Unknown: P(T=0) = 0 and P(T>0) = 0. `p_sample` is only read when P(T=0) = 0 (it may be None
    otherwise: the greedy answers alone decide HighlyKnown and MaybeKnown)."""
    if not 0.0 <= p_greedy <= 1.0:
        raise ValueError(f"P(T=0) must be in [0, 1], got {p_greedy}")
    if p_greedy == 1.0:
        return "HighlyKnown"
    if p_greedy > 0.0:
        return "MaybeKnown"
    if p_sample is None:
        raise ValueError("a fact whose greedy answers are never correct needs P(T>0) to be categorised")
    return "WeaklyKnown" if p_sample > 0.0 else "Unknown"


def category_counts(categories: list[str]) -> dict[str, int]:
    """{category: count} over all four categories (zeros included), in CATEGORIES order."""
    return {c: sum(x == c for x in categories) for c in CATEGORIES}


def transition_matrix(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """matrix[a][b] = number of facts (keys present in both probes) in category a before and b after."""
    matrix = {a: {b: 0 for b in CATEGORIES} for a in CATEGORIES}
    for key in sorted(before.keys() & after.keys()):
        matrix[before[key]][after[key]] += 1
    return matrix


def transition_summary(matrix: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Counts off the matrix: facts compared, unchanged (the diagonal), upgraded (to a more known
    category), downgraded, HighlyKnown -> lower ('forgotten'), and the fraction unchanged."""
    total = sum(sum(row.values()) for row in matrix.values())
    same = sum(matrix[c][c] for c in CATEGORIES)
    up = sum(matrix[a][b] for a in CATEGORIES for b in CATEGORIES if KNOWN_ORDER[b] < KNOWN_ORDER[a])
    down = total - same - up
    forgotten = sum(matrix["HighlyKnown"][b] for b in CATEGORIES[1:])
    return {"facts": total, "unchanged": same, "upgraded": up, "downgraded": down,
            "highly_known_lost": forgotten, "agreement": same / total if total else float("nan")}


def knowledge_metrics(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, float]:
    """Knowledge of a fine-tune over the same facts (keys in both):
    acquired = #facts HighlyKnown after; gained = acquired - #HighlyKnown before;
    new = #facts HighlyKnown after that were not before; forgotten = #HighlyKnown before that are not after."""
    keys = before.keys() & after.keys()
    hk_before = {k for k in keys if before[k] == "HighlyKnown"}
    hk_after = {k for k in keys if after[k] == "HighlyKnown"}
    return {"facts": len(keys), "highly_known_before": len(hk_before), "acquired": len(hk_after),
            "gained": len(hk_after) - len(hk_before), "new": len(hk_after - hk_before),
            "forgotten": len(hk_before - hk_after)}


def retained_accuracy(before: Mapping[str, str], after_p_greedy: Mapping[str, float]) -> list[float]:
    """Per fact HighlyKnown in the first probe (and present in the second), in key order: its P(T=0) in the
    second. Their mean is the retention: the greedy exact-match accuracy after, over the probe's k-shot
    prompts, on the facts known before (1 = all still answered on every prompt; a fact that falls to
    MaybeKnown with 7 of 10 prompts right counts 0.7, one that falls to WeaklyKnown or Unknown counts 0)."""
    keys = sorted(before.keys() & after_p_greedy.keys())
    return [float(after_p_greedy[k]) for k in keys if before[k] == "HighlyKnown"]


def relative_gain(acquired: float, baseline_acquired: float) -> float:
    """(acquired - baseline) / baseline: the seed paper's 'more knowledge' figure (+24% for two-stage
    over one-stage); nan when the baseline acquired nothing."""
    return (acquired - baseline_acquired) / baseline_acquired if baseline_acquired else float("nan")


def format_matrix(matrix: Mapping[str, Mapping[str, int]]) -> str:
    """The matrix as a fixed-width text table, rows = before, columns = after."""
    short = {"HighlyKnown": "HK", "MaybeKnown": "MK", "WeaklyKnown": "WK", "Unknown": "UNK"}
    lines = ["before\\after " + "".join(f"{short[c]:>7}" for c in CATEGORIES)]
    for a in CATEGORIES:
        lines.append(f"{short[a]:<12} " + "".join(f"{matrix[a][b]:>7}" for b in CATEGORIES))
    return "\n".join(lines)
