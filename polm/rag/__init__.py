"""Retrieval-augmented generation: chunking, dense / BM25 / hybrid indexes, retrieval, answers with
citations, retrieval and citation metrics, and the RAFT data builder (see docs/rag.md)."""
