"""Caption metrics: corpus BLEU (Papineni et al. 2002) and CIDEr-D (Vedantam et al. 2015), on
lower-cased whitespace tokens.

BLEU = BP · exp(Σ_n ¼ log p_n), p_n the clipped n-gram precision over the corpus (n = 1..4), BP =
min(1, exp(1 - r/c)) with r the closest reference lengths and c the candidates' length; ×100, no smoothing.
CIDEr-D, as the COCO caption evaluation computes it: per image and n, g_n(s) = tf(s) · log(N / df(s))
(N images, df over the images' reference sets); sim_n = Σ min(g_c, g_r) · g_r / (|g_c| |g_r|) ·
exp(-(len_c - len_r)² / (2σ²)), σ = 6; CIDEr-D = 10 · mean over references of mean_n sim_n; the corpus
score is the mean over images.
"""

from __future__ import annotations

import math
import re
from collections import Counter


def tokens(text: str) -> list[str]:
    """Lower-cased words with punctuation split off."""
    return re.findall(r"[\w'-]+|[^\w\s]", text.lower())


def ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(candidates: list[str], references: list[list[str]], max_n: int = 4) -> float:
    """Corpus BLEU ×100 of candidates against their reference lists (no smoothing: 0 when some p_n is 0)."""
    matched, total = [0] * max_n, [0] * max_n
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references):
        c, rs = tokens(cand), [tokens(r) for r in refs]
        cand_len += len(c)
        ref_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            counts = ngrams(c, n)
            best = Counter()
            for r in rs:
                best |= ngrams(r, n)
            matched[n - 1] += sum(min(k, best[g]) for g, k in counts.items())
            total[n - 1] += max(len(c) - n + 1, 0)
    if min(matched) == 0 or cand_len == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    brevity = min(1.0, math.exp(1 - ref_len / cand_len))
    return 100.0 * brevity * math.exp(log_p)


def _vectors(words: list[str], df: Counter, log_n: float, max_n: int) -> tuple[list[dict], list[float]]:
    vecs, norms = [], []
    for n in range(1, max_n + 1):
        vec = {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in ngrams(words, n).items()}
        vecs.append(vec)
        norms.append(math.sqrt(sum(v * v for v in vec.values())))
    return vecs, norms


def cider_d(candidates: list[str], references: list[list[str]], sigma: float = 6.0, max_n: int = 4) -> list[float]:
    """CIDEr-D of each candidate (the corpus score is their mean)."""
    refs_tok = [[tokens(r) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in refs_tok:
        df.update({g for r in refs for n in range(1, max_n + 1) for g in ngrams(r, n)})
    log_n = math.log(float(len(candidates)))
    scores = []
    for cand, refs in zip(candidates, refs_tok):
        c = tokens(cand)
        vc, nc = _vectors(c, df, log_n, max_n)
        total = 0.0
        for r in refs:
            vr, nr = _vectors(r, df, log_n, max_n)
            penalty = math.exp(-((len(c) - len(r)) ** 2) / (2 * sigma ** 2))
            sims = [sum(min(v, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, v in vc[n].items())
                    / (nc[n] * nr[n]) * penalty if nc[n] and nr[n] else 0.0 for n in range(max_n)]
            total += sum(sims) / max_n
        scores.append(10.0 * total / len(refs))
    return scores
