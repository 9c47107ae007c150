"""Which FAISS store polm rag uses by default: exact flat vs HNSW on the embedded Wikipedia corpus.

    taskset -c 1 python bench/rag_store.py --out docs/results/rag_index_store.json

Embeds the corpus once with MiniLM through polm's index (flat), rebuilds HNSW stores from the same
vectors, and times build and queries (wiki-facts test questions) for each; recall@10 of HNSW is
measured against the exact flat top 10. It then adds polm's retrieval rows (BM25 / dense / hybrid,
recall@1/5/20 and MRR vs the gold document) on the same questions. One thread throughout.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import command_line, machine_description, package_versions

from polm.data.loaders import load_records
from polm.io import atomic_write_json
from polm.rag.chunking import corpus_documents
from polm.rag.config import RagEvalConfig
from polm.rag.embedders import build_embedder
from polm.rag.evaluate import load_questions, retrieval_rows
from polm.rag.index import ChunkingConfig, DenseConfig, RagIndex, load_index


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def store_trial(faiss, vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray, k: int,
                m: int | None, ef_search: int = 64) -> dict:
    """Build a flat (m None) or HNSW-m store from `vectors`, query it, compare with the exact top-k."""
    d = vectors.shape[1]
    if m is None:
        store = faiss.IndexFlatIP(d)
    else:
        store = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        store.hnsw.efConstruction, store.hnsw.efSearch = 80, ef_search
    _, build_s = timed(lambda: store.add(vectors))
    (_, ids), query_s = timed(lambda: store.search(queries, k))
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact)])
    return {"store": "flat" if m is None else f"hnsw{m}/ef{ef_search}", "build_s": round(build_s, 4),
            "queries_per_s": round(len(queries) / query_s, 1), f"recall@{k}_vs_exact": round(float(overlap), 4),
            "bytes": int(faiss.serialize_index(store).nbytes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", default="builtin:wiki-facts?split=test")
    parser.add_argument("--out", default="docs/results/rag_index_store.json")
    parser.add_argument("--docs", type=int, default=0,
                        help="embed a seeded subset of this many documents (0 = all 10,033); questions are kept "
                             "only for the documents embedded")
    parser.add_argument("--embedder", default="minilm", choices=["minilm", "hashing"],
                        help="hashing: 384-dim feature-hashed words (no model) when MiniLM cannot run in time")
    parser.add_argument("--index-dir", default="runs/rag/bench-store-index",
                        help="the polm index is saved here after embedding and reused by a rerun")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    chunking = ChunkingConfig(mode="tokens", size=128, overlap=32)
    ref = f"builtin:wiki-summaries?n={args.docs}&seed=0" if args.docs else "builtin:wiki-summaries"
    docs = corpus_documents(load_records(ref, require_targets=False).records)
    options = {"dim": 384} if args.embedder == "hashing" else {}
    embedder, load_s = timed(lambda: build_embedder(args.embedder, options))
    if (Path(args.index_dir) / "index.json").is_file():
        (index, embed_build_s) = load_index(args.index_dir, embedder), None   # embedded by an earlier run
    else:
        index = RagIndex(embedder, chunking, DenseConfig(embedder=args.embedder, embedder_options=options, store="flat"))
        _, embed_build_s = timed(lambda: index.add(docs))
        index.save(args.index_dir)
    vectors = index.store.index.reconstruct_n(0, index.store.ntotal)
    questions = [q for q in load_questions(args.questions) if q["doc_id"] in index.doc_chunks]
    queries, query_embed_s = timed(lambda: embedder.encode([q["question"] for q in questions]))
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    _, exact = flat.search(queries, 10)
    stores = [store_trial(faiss, vectors, queries, exact, 10, m, ef) for m, ef in
              ((None, 0), (32, 64), (32, 16))]
    rows, rows_s = timed(lambda: retrieval_rows(index, questions, RagEvalConfig(generate=False, ks=[1, 5, 20])))
    result = {
        "command": command_line(__file__), "machine": machine_description(),
        "packages": package_versions(["faiss-cpu", "bm25s", "sentence-transformers"]),
        "corpus": {"source": ref, "documents": len(docs), "chunks": len(index.chunks), "chunking": "tokens 128 / overlap 32",
                   "truncated_chunks_over_256_word_pieces": index.truncated},
        "embedder": embedder.id, "embedder_load_s": round(load_s, 2),
        "embed_and_build_flat_s": embed_build_s and round(embed_build_s, 2),
        "chunks_embedded_per_s": embed_build_s and round(len(index.chunks) / embed_build_s, 1),
        "questions": len(questions), "query_embed_s": round(query_embed_s, 3),
        "stores": stores, "retrieval": rows, "retrieval_rows_s": round(rows_s, 2),
    }
    atomic_write_json(args.out, result)
    print(result["stores"])
    print({label: {m: round(s["value"], 3) for m, s in row.items()} for label, row in rows.items()})


if __name__ == "__main__":
    main()
