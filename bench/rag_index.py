"""polm's RAG index against FAISS and bm25s used directly: index build, query throughput and memory.

    python bench/rag_index.py --docs 2000 --rounds 2 --out bench/results/rag_index.json

Both sides do the same work on the same documents of the embedded Wikipedia summaries, each trial in
a fresh process (its own peak memory), sides alternating (polm, raw, raw, polm, ...) after one
warm-up each:
- **build**: chunk every document into 128-word windows with 32 overlap, embed the chunks with
  all-MiniLM-L6-v2 (unit norm, at most 256 word pieces), add them to an exact inner-product FAISS
  store with int64 ids, and build the bm25s index (English stop words) over the same chunks.
  polm: `RagIndex.add` then its first lexical search builds BM25. raw: the same windows by hand,
  `SentenceTransformer.encode`, `IndexIDMap2(IndexFlatIP).add_with_ids`, `bm25s.BM25().index`.
- **query**: all 1,250 wiki-facts test questions, top 10, as one batch: dense (embed the questions + search) and BM25 (tokenize + retrieve), with chunk ids mapped
  back to documents on both sides. The two sides must return the same top-10 chunk ids.

The model is loaded before the clock starts on both sides; polm's overhead is (polm - raw) / raw.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import (
    PeakRss,
    add_worker_args,
    alternate_workers,
    command_line,
    machine_description,
    median,
    package_versions,
    serve_worker,
    spread,
)

SIZE, OVERLAP, K = 128, 32, 10


def load_work(docs: int) -> tuple[list[tuple[str, str, str]], list[str]]:
    from polm.data.loaders import load_records
    from polm.rag.chunking import corpus_documents
    from polm.rag.evaluate import load_questions

    ref = f"builtin:wiki-summaries?n={docs}&seed=0" if docs else "builtin:wiki-summaries"
    documents = corpus_documents(load_records(ref, require_targets=False).records)
    # every test question is a query (1,250), also those whose document is not in the subset: throughput
    # wants enough queries to time, and the two sides' top-10 ids are compared on all of them
    questions = [q["question"] for q in load_questions("builtin:wiki-facts?split=test")]
    return documents, questions


def polm_side(documents, questions) -> tuple[dict, list, list]:
    from polm.rag.embedders import build_embedder
    from polm.rag.index import ChunkingConfig, DenseConfig, RagIndex

    embedder = build_embedder("minilm")
    index = RagIndex(embedder, ChunkingConfig(mode="tokens", size=SIZE, overlap=OVERLAP),
                     DenseConfig(embedder="minilm", store="flat"))
    mem = PeakRss()
    with mem:
        t0 = time.perf_counter()
        index.add(documents)
        t1 = time.perf_counter()
        index.bm25_search(["warm"], 1)                 # builds the lexical index
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    dense = index.dense_search(questions, K)
    t4 = time.perf_counter()
    lexical = index.bm25_search(questions, K)
    t5 = time.perf_counter()
    timing = {"chunks": len(index.chunks), "dense_build_s": t1 - t0, "bm25_build_s": t2 - t1, "build_s": t2 - t0,
              "dense_query_s": t4 - t3, "bm25_query_s": t5 - t4, "build_memory": mem.as_dict()}
    return timing, [[h.chunk.id for h in row] for row in dense], [[h.chunk.id for h in row] for row in lexical]


def raw_side(documents, questions) -> tuple[dict, list, list]:
    import bm25s
    import faiss
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from polm.assets import asset_file

    model = SentenceTransformer(str(asset_file("all-minilm-l6-v2")), device="cpu")
    model.max_seq_length = 256
    mem = PeakRss()
    with mem:
        t0 = time.perf_counter()
        ids, texts = [], []
        for doc_id, _, text in documents:
            words, start, i = text.split(), 0, 0
            while True:
                end = min(start + SIZE, len(words))
                ids.append(f"{doc_id}#{i}")
                texts.append(" ".join(words[start:end]))
                if end >= len(words):
                    break
                start, i = start + SIZE - OVERLAP, i + 1
        vectors = model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                               show_progress_bar=False).astype(np.float32)
        store = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        store.add_with_ids(vectors, np.arange(len(texts), dtype=np.int64))
        t1 = time.perf_counter()
        bm25 = bm25s.BM25()
        bm25.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    q = model.encode(questions, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                     show_progress_bar=False).astype(np.float32)
    _, dense_ids = store.search(q, K)
    dense = [[ids[int(i)] for i in row if i >= 0] for row in dense_ids]
    t4 = time.perf_counter()
    found, scores = bm25.retrieve(bm25s.tokenize(questions, stopwords="en", show_progress=False), k=K,
                                  show_progress=False)
    lexical = [[ids[int(d)] for d, s in zip(drow, srow) if s > 0] for drow, srow in zip(found, scores)]
    t5 = time.perf_counter()
    timing = {"chunks": len(texts), "dense_build_s": t1 - t0, "bm25_build_s": t2 - t1, "build_s": t2 - t0,
              "dense_query_s": t4 - t3, "bm25_query_s": t5 - t4, "build_memory": mem.as_dict()}
    return timing, dense, lexical


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    documents, questions = load_work(spec["docs"])
    side = polm_side if spec["side"] == "polm" else raw_side
    timing, dense, lexical = side(documents, questions)
    timing.update(questions=len(questions), documents=len(documents),
                  dense_queries_per_s=len(questions) / timing["dense_query_s"],
                  bm25_queries_per_s=len(questions) / timing["bm25_query_s"],
                  chunks_per_s=timing["chunks"] / timing["build_s"], dense_ids=dense, bm25_ids=lexical)
    return timing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000, help="a seeded subset of the 10,033 summaries (0 = all)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/rag_index.json")
    add_worker_args(parser)
    args = parser.parse_args()
    if serve_worker(args, worker):
        return
    specs = {side: {"name": side, "side": side, "docs": args.docs, "threads": args.threads} for side in ("polm", "raw")}
    warm = {side: {**spec, "docs": 50} for side, spec in specs.items()}
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    runs, _ = alternate_workers(Path(__file__), specs, args.rounds, warmups=warm, env=env, timeout_s=3600)
    first = {side: runs[side][0] for side in runs}
    same = {kind: first["polm"][f"{kind}_ids"] == first["raw"][f"{kind}_ids"] for kind in ("dense", "bm25")}
    figures = ("build_s", "dense_build_s", "bm25_build_s", "dense_queries_per_s", "bm25_queries_per_s")
    table = {side: {f: spread([r[f] for r in rows]) for f in figures} for side, rows in runs.items()}
    for side, rows in runs.items():
        table[side]["build_peak_delta_mib"] = spread([r["build_memory"]["peak_delta_mib"] for r in rows])
        table[side]["process_peak_rss_mib"] = spread([r["peak_rss_mib"] for r in rows])

    def ratio(fig: str) -> float:
        return round(median(table["polm"][fig]["values"]) / median(table["raw"][fig]["values"]), 4)

    overhead = {"build_time": round(ratio("build_s") - 1, 4),
                "dense_query_throughput": round(1 - ratio("dense_queries_per_s"), 4),
                "bm25_query_throughput": round(1 - ratio("bm25_queries_per_s"), 4),
                "build_peak_memory": round(ratio("build_peak_delta_mib") - 1, 4)}
    result = {"command": command_line(__file__), "machine": machine_description(),
              "packages": package_versions(["faiss-cpu", "bm25s", "sentence-transformers", "torch"]),
              "work": {"documents": first["polm"]["documents"], "chunks": first["polm"]["chunks"],
                       "chunks_raw": first["raw"]["chunks"], "questions": first["polm"]["questions"], "k": K,
                       "chunking": f"{SIZE} words / overlap {OVERLAP}", "threads": args.threads, "rounds": args.rounds},
              "same_top10_ids": same, "table": table, "polm_overhead": overhead,
              "goal": "polm overhead <= 10% on build time, query throughput and build memory"}
    from polm.io import atomic_write_json

    atomic_write_json(args.out, result, indent=1)
    print(json.dumps({"same_top10_ids": same, "polm_overhead": overhead,
                      "medians": {s: {f: round(v["median"], 3) for f, v in t.items()} for s, t in table.items()}},
                     indent=1))
    if not all(same.values()):
        print("WARNING: the two sides returned different top-10 ids", file=sys.stderr)


if __name__ == "__main__":
    main()
