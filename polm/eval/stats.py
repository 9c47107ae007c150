"""Statistics for evaluation: bootstrap confidence intervals, paired model comparison, pass@k, votes.

Every number polm eval prints carries its sample count and a bootstrap 95% interval, because on a
few hundred items a 3-point difference is often noise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, stat: Callable[[np.ndarray], float] | None = None,
                 n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `stat` (default: the mean) over items.

    values: [N] per-item scores, or [N, d] per-item columns for a statistic of several sums (e.g.
    perplexity = exp(Σnll / Σtokens) from columns (nll, tokens)). Each resample draws N items with
    replacement; the interval is the (α/2, 1-α/2) quantiles of the resampled statistic, α = 1-confidence.
    """
    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), size=(n_resamples, len(data)))
    if stat is None:
        samples = data[idx].mean(axis=1)   # vectorised: [n_resamples]
    else:
        samples = np.array([stat(data[row]) for row in idx])
    alpha = 1.0 - confidence
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def summarize(values: Sequence[float], *, seed: int = 0) -> dict[str, float]:
    """{value: mean, ci_low, ci_high, n} for per-item scores."""
    data = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(data, seed=seed)
    return {"value": float(data.mean()) if len(data) else float("nan"), "ci_low": low, "ci_high": high,
            "n": int(len(data))}


def paired_difference(a: Sequence[float], b: Sequence[float], *, seed: int = 0) -> dict[str, float]:
    """Model B minus model A on the SAME items: mean of d_i = b_i - a_i with a bootstrap 95% CI over
    items. Pairing removes the item-difficulty variance that two independent intervals would carry."""
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired comparison needs the same items: {a_arr.shape} vs {b_arr.shape}")
    diff = b_arr - a_arr
    low, high = bootstrap_ci(diff, seed=seed)
    return {"diff": float(diff.mean()) if len(diff) else float("nan"), "ci_low": low, "ci_high": high,
            "n": int(len(diff))}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (Chen et al. 2021, "Evaluating Large Language
    Models Trained on Code"): 1 - C(n-c, k) / C(n, k), computed as 1 - Π_{i=n-c+1}^{n} (1 - k/i)
    to stay exact in floating point for large n."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """The most frequent non-None answer (self-consistency, Wang et al. 2022); ties go to the answer
    seen first, so the vote is deterministic. None when no sample produced an answer."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)
