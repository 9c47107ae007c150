"""Retrievers over a RagIndex, by name (`bm25`, `dense`, `hybrid`), reciprocal rank fusion, and the LM
reranker that orders passages by the model's likelihood of the question given each passage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from polm.rag.index import Hit, RagIndex, check_k
from polm.registry import Registry

RETRIEVERS = Registry("retriever")
RRF_K = 60          # Cormack et al. 2009's constant
RERANK_TEMPLATE = "Passage: {passage}\nA question this passage answers:"


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> list[tuple[str, float]]:
    """RRF (Cormack, Clarke & Büttcher 2009): score(d) = Σ_r 1 / (k + rank_r(d)), rank from 1, summed
    over the rankings that contain d. Sorted by score, ties by best single rank, then by id."""
    scores: dict[str, float] = {}
    best: dict[str, int] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            best[item] = min(best.get(item, rank), rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]], kv[0]))


@RETRIEVERS.register("bm25")
def bm25(index: RagIndex, queries: list[str], k: int) -> list[list[Hit]]:
    return index.bm25_search(queries, k)


@RETRIEVERS.register("dense")
def dense(index: RagIndex, queries: list[str], k: int) -> list[list[Hit]]:
    return index.dense_search(queries, k)


@RETRIEVERS.register("hybrid")
def hybrid(index: RagIndex, queries: list[str], k: int, depth: int = 50, rrf_k: int = RRF_K) -> list[list[Hit]]:
    """RRF of the BM25 and dense top-`depth` lists, cut to k."""
    depth = max(depth, k)
    out = []
    for lexical, vector in zip(index.bm25_search(queries, depth), index.dense_search(queries, depth)):
        by_id = {h.chunk.id: h.chunk for h in [*lexical, *vector]}
        fused = reciprocal_rank_fusion([[h.chunk.id for h in lexical], [h.chunk.id for h in vector]], rrf_k)
        out.append([Hit(by_id[cid], score, r + 1) for r, (cid, score) in enumerate(fused[:k])])
    return out


def retrieve(index: RagIndex, queries: list[str], k: int, retriever: str = "hybrid",
             options: dict[str, Any] | None = None) -> list[list[Hit]]:
    """Top-k chunks per query from the retriever registered as `retriever` (unknown: a PolmError)."""
    from polm.registry import check_options

    check_k(k)
    fn = RETRIEVERS.get(retriever)
    check_options(fn, options or {}, where=f"retriever '{retriever}'", skip=3)
    return fn(index, queries, k, **(options or {}))


def lm_rerank(model: Any, queries: list[str], hits: list[list[Hit]], k: int) -> list[list[Hit]]:
    """Reorder each query's hits by log p(question | passage) under the LM (`model` is a polm.eval
    ModelAdapter: its `loglikelihood` sums polm.ops token log-probs of the continuation), keep k.
    Every passage of one query is scored against the same question tokens, so sums compare fairly."""
    check_k(k)
    pairs = [(RERANK_TEMPLATE.format(passage=h.chunk.text), f" {q}") for q, row in zip(queries, hits) for h in row]
    scores = iter(lp for lp, _ in model.loglikelihood(pairs)) if pairs else iter(())
    out = []
    for row in hits:
        scored = sorted(((next(scores), h) for h in row), key=lambda sh: (-sh[0], sh[1].rank))
        out.append([Hit(h.chunk, s, r + 1) for r, (s, h) in enumerate(scored[:k])])
    return out


def unique_docs(hits: list[Hit]) -> list[str]:
    """Document ids in rank order, each once (several chunks of one document count at its best rank)."""
    seen: dict[str, None] = {}
    for h in hits:
        seen.setdefault(h.chunk.doc_id, None)
    return list(seen)
