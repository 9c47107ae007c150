"""Reciprocal rank fusion by hand, the retriever registry, hybrid retrieval and the LM reranker."""

from __future__ import annotations

import pytest

from polm.errors import PolmError
from polm.rag.embedders import HashingEmbedder
from polm.rag.index import DenseConfig, RagIndex
from polm.rag.retrieve import lm_rerank, reciprocal_rank_fusion, retrieve, unique_docs

DOCS = [("cat", "Cats", "The cat sat on the warm mat."),
        ("dog", "Dogs", "A dog barks at the mailman."),
        ("paris", "Paris", "Paris is the capital of France."),
        ("rome", "Rome", "Rome is the capital of Italy and has a cat colony.")]


@pytest.fixture()
def index() -> RagIndex:
    idx = RagIndex(HashingEmbedder(64), dense=DenseConfig(embedder="hashing", embedder_options={"dim": 64}))
    idx.add(DOCS)
    return idx


def test_rrf_by_hand():
    # k=1: a: 1/2 + 1/3 = 0.8333; b: 1/3 + 1/2 = 0.8333 (tie: both best rank 1 -> by id); c: 1/4; d: 1/4
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "a", "d"]], k=1)
    assert [item for item, _ in fused] == ["a", "b", "c", "d"]
    assert [round(s, 4) for _, s in fused] == [0.8333, 0.8333, 0.25, 0.25]
    # k=60 single list: 1/61, 1/62
    assert reciprocal_rank_fusion([["x", "y"]]) == [("x", 1 / 61), ("y", 1 / 62)]
    # an item in one list only loses to one ranked in both
    assert [i for i, _ in reciprocal_rank_fusion([["p", "q"], ["q"]], k=60)] == ["q", "p"]


def test_hybrid_is_rrf_of_bm25_and_dense(index):
    query = ["capital of France"]
    lexical = [h.chunk.id for h in retrieve(index, query, 4, "bm25")[0]]
    vector = [h.chunk.id for h in retrieve(index, query, 4, "dense")[0]]
    fused = retrieve(index, query, 3, "hybrid", {"depth": 4})[0]
    assert [h.chunk.id for h in fused] == [i for i, _ in reciprocal_rank_fusion([lexical, vector])][:3]
    assert fused[0].chunk.doc_id == "paris" and [h.rank for h in fused] == [1, 2, 3]


def test_unknown_retriever_and_bad_k(index):
    with pytest.raises(PolmError, match="unknown retriever 'hybird'.*Did you mean 'hybrid'"):
        retrieve(index, ["x"], 3, "hybird")
    with pytest.raises(PolmError, match="k must be a positive integer, got 0"):
        retrieve(index, ["x"], 0, "bm25")
    with pytest.raises(PolmError, match="has no parameter 'deep'"):
        retrieve(index, ["x"], 2, "hybrid", {"deep": 3})


class FakeLM:
    """log p(question | passage) = -(number of the question's words missing from the passage)."""

    def __init__(self):
        self.calls = []

    def loglikelihood(self, pairs):
        self.calls += pairs
        return [(-float(sum(w not in ctx.lower() for w in q.lower().split())), False) for ctx, q in pairs]


def test_lm_rerank_orders_by_likelihood_and_cuts_to_k(index):
    hits = retrieve(index, ["cat"], 4, "bm25")
    lm = FakeLM()
    out = lm_rerank(lm, ["capital italy"], hits, 1)
    assert [h.chunk.doc_id for h in out[0]] == ["rome"] and out[0][0].score == 0.0
    assert all(q == " capital italy" and ctx.startswith("Passage: ") for ctx, q in lm.calls)


def test_unique_docs_keeps_the_best_rank(index):
    hits = retrieve(index, ["cat"], 4, "bm25")[0]
    assert unique_docs(hits + hits) == [h.chunk.doc_id for h in hits]
