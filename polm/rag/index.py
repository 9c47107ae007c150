"""The RAG index: chunks, their dense vectors in FAISS (exact flat or HNSW) and a bm25s lexical index.

Documents are added and deleted in place: only the new chunks are embedded, a flat store drops vectors
by id and HNSW (which cannot remove) filters deleted ids at search time. The lexical index is rebuilt
from the stored chunk texts on the next lexical search (BM25's IDF is corpus-wide, so every score moves
anyway; tokenising is cheap next to embedding). On disk: `index.json` (config, embedder id, corpus
hash), `chunks.jsonl` and `dense.faiss`, written as one directory atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from polm.errors import PolmError, require
from polm.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from polm.rag.chunking import Chunk, ChunkMode, chunk_document
from polm.rag.embedders import Embedder

FORMAT = 1
Store = Literal["flat", "hnsw"]


@dataclass
class ChunkingConfig:
    """`document`: one chunk per document; `tokens`: windows of `size` whitespace tokens, `overlap` shared."""

    mode: ChunkMode = "document"
    size: int = 128
    overlap: int = 32


@dataclass
class DenseConfig:
    """The embedder (an EMBEDDERS name) and the FAISS store: `flat` (exact inner product) or `hnsw`
    (graph with `hnsw_m` links per node, `ef_construction` / `ef_search` candidate lists)."""

    embedder: str = "minilm"
    embedder_options: dict[str, Any] = field(default_factory=dict)
    store: Store = "flat"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64


@dataclass
class Hit:
    """One retrieved chunk: rank from 1, and the retriever's score (higher is better)."""

    chunk: Chunk
    score: float
    rank: int


def _faiss():
    return require("faiss", "rag", "the dense index")


class RagIndex:
    """Chunks with int64 ids shared by the FAISS store, and the lexical index over the same chunks."""

    def __init__(self, embedder: Embedder, chunking: ChunkingConfig | None = None, dense: DenseConfig | None = None):
        self.embedder, self.chunking, self.dense = embedder, chunking or ChunkingConfig(), dense or DenseConfig()
        self.chunks: dict[int, Chunk] = {}
        self.doc_chunks: dict[str, list[int]] = {}
        self.doc_hashes: dict[str, str] = {}
        self.deleted: set[int] = set()        # HNSW tombstones (ids still in the graph)
        self.next_id = 0
        self.truncated = 0                    # chunks longer than the embedder reads
        self.store = self._new_store()
        self._bm25: Any = None
        self._bm25_ids: list[int] = []

    def _new_store(self):
        faiss, d = _faiss(), self.embedder.dim
        if self.dense.store == "hnsw":
            inner = faiss.IndexHNSWFlat(d, self.dense.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.dense.ef_construction
        else:
            inner = faiss.IndexFlatIP(d)
        return faiss.IndexIDMap2(inner)

    # --- documents --------------------------------------------------------------------------------

    def add(self, documents: list[tuple[str, str, str]]) -> int:
        """Add (doc_id, title, text) documents; returns the number of new chunks. An id already in the
        index is a PolmError (delete it first)."""
        new: list[tuple[int, Chunk]] = []
        for doc_id, title, text in documents:
            if doc_id in self.doc_chunks or any(c.doc_id == doc_id for _, c in new):
                raise PolmError(f"document '{doc_id}' is already in the index", fix="Delete it first, or use another id.")
            for chunk in chunk_document(doc_id, text, title=title, mode=self.chunking.mode,
                                        size=self.chunking.size, overlap=self.chunking.overlap):
                new.append((self.next_id, chunk))
                self.next_id += 1
        if not new:
            return 0
        texts = [c.text for _, c in new]
        limit = getattr(getattr(self.embedder, "model", None), "max_seq_length", None)
        if limit:
            self.truncated += sum(n > limit for n in self.embedder.count_tokens(texts))   # one batched call
        vectors = self.embedder.encode(texts)
        self.store.add_with_ids(vectors, np.array([i for i, _ in new], dtype=np.int64))
        for cid, chunk in new:
            self.chunks[cid] = chunk
            self.doc_chunks.setdefault(chunk.doc_id, []).append(cid)
        for doc_id, _, text in documents:
            self.doc_hashes[doc_id] = hashlib.sha256(text.encode()).hexdigest()
        self._bm25 = None
        return len(new)

    def delete(self, doc_ids: list[str]) -> int:
        """Remove documents and their chunks; returns the number of chunks removed."""
        missing = [d for d in doc_ids if d not in self.doc_chunks]
        if missing:
            raise PolmError(f"document '{missing[0]}' is not in the index", fix="Check the ids (see chunks.jsonl).")
        ids = [cid for d in doc_ids for cid in self.doc_chunks.pop(d)]
        for d in doc_ids:
            del self.doc_hashes[d]
        for cid in ids:
            del self.chunks[cid]
        if self.dense.store == "hnsw":
            self.deleted.update(ids)
        else:
            self.store.remove_ids(np.array(ids, dtype=np.int64))
        self._bm25 = None
        return len(ids)

    def corpus_hash(self) -> str:
        """sha256 over the sorted (doc_id, sha256(text)) pairs: the same documents give the same hash."""
        digest = hashlib.sha256()
        for doc_id in sorted(self.doc_hashes):
            digest.update(json.dumps([doc_id, self.doc_hashes[doc_id]]).encode())
        return digest.hexdigest()

    # --- search -----------------------------------------------------------------------------------

    def dense_search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-k chunks per query by inner product of unit embeddings (cosine)."""
        check_k(k)
        if not self.chunks:
            return [[] for _ in queries]
        faiss = _faiss()
        params = None
        if self.dense.store == "hnsw":
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.array(sorted(self.deleted), dtype=np.int64))) \
                if self.deleted else None
            params = faiss.SearchParametersHNSW(efSearch=max(self.dense.ef_search, k), sel=sel)
        scores, ids = self.store.search(self.embedder.encode(queries), min(k, len(self.chunks)), params=params)
        return [[Hit(self.chunks[int(i)], float(s), r + 1) for r, (s, i) in enumerate(zip(srow, irow)) if i >= 0]
                for srow, irow in zip(scores, ids)]

    def bm25_search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-k chunks per query by BM25 (bm25s defaults: k1 = 1.5, b = 0.75, English stopwords)."""
        check_k(k)
        bm25s = require("bm25s", "rag", "the lexical index")
        if not self.chunks:
            return [[] for _ in queries]
        if self._bm25 is None:
            self._bm25_ids = sorted(self.chunks)
            self._bm25 = bm25s.BM25()
            self._bm25.index(_tokens(bm25s, [self.chunks[i].text for i in self._bm25_ids]), show_progress=False)
        tokens = _tokens(bm25s, queries)
        out: list[list[Hit]] = [[] for _ in queries]
        asked = [i for i, t in enumerate(tokens) if t]      # a query of stop words only matches nothing
        if asked:                                           # one batched call: bm25s scores all queries at once
            docs, scores = self._bm25.retrieve([tokens[i] for i in asked], k=min(k, len(self._bm25_ids)),
                                               show_progress=False)
            for i, drow, srow in zip(asked, docs, scores):
                out[i] = [Hit(self.chunks[self._bm25_ids[int(d)]], float(s), r + 1)
                          for r, (d, s) in enumerate(zip(drow, srow)) if s > 0]
        return out

    # --- disk -------------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        return {"format": FORMAT, "embedder": self.embedder.id, "dim": self.embedder.dim,
                "chunking": asdict(self.chunking), "dense": asdict(self.dense), "corpus_sha256": self.corpus_hash(),
                "documents": len(self.doc_chunks), "chunks": len(self.chunks), "next_id": self.next_id,
                "deleted": sorted(self.deleted), "truncated_chunks": self.truncated, "doc_sha256": self.doc_hashes}

    def save(self, path: str | Path) -> Path:
        """Write the index directory atomically (an existing index there is replaced only on success)."""
        faiss = _faiss()
        with atomic_dir(path, overwrite=True) as tmp:
            atomic_write_text(tmp / "chunks.jsonl", "".join(
                json.dumps({"key": cid, **self.chunks[cid].to_json()}, ensure_ascii=False) + "\n"
                for cid in sorted(self.chunks)))
            atomic_write_bytes(tmp / "dense.faiss", faiss.serialize_index(self.store).tobytes())
            atomic_write_json(tmp / "index.json", self.manifest(), indent=1)
        return Path(path)


def _tokens(bm25s, texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


def check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise PolmError(f"k must be a positive integer, got {k!r}", fix="Ask for k >= 1 passages, e.g. k=5.")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """index.json of an index directory, or a PolmError naming what is missing or broken."""
    folder = Path(path)
    if not folder.is_dir():
        raise PolmError(f"no index at '{folder}'", fix="Build one with `polm rag index configs/rag_index.yaml`.")
    try:
        manifest = json.loads((folder / "index.json").read_text())
    except (OSError, ValueError) as err:
        raise PolmError(f"the index directory '{folder}' is corrupt (index.json: {type(err).__name__})",
                        fix="Rebuild it with `polm rag index`.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PolmError(f"'{folder}/index.json' is not a polm index of format {FORMAT}", fix="Rebuild it with `polm rag index`.")
    return manifest


def load_index(path: str | Path, embedder: Embedder) -> RagIndex:
    """Reopen a saved index with `embedder`, which must have the id the index was built with."""
    folder, manifest = Path(path), read_manifest(path)
    if manifest["embedder"] != embedder.id:
        raise PolmError(f"the index at '{folder}' was built with embedder '{manifest['embedder']}', not '{embedder.id}'",
                        fix="Load it with the embedder it was built with, or rebuild it with `polm rag index`.")
    index = RagIndex(embedder, ChunkingConfig(**manifest["chunking"]), DenseConfig(**manifest["dense"]))
    try:
        store = _faiss().deserialize_index(np.frombuffer((folder / "dense.faiss").read_bytes(), dtype=np.uint8))
        rows = [json.loads(line) for line in (folder / "chunks.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError, RuntimeError) as err:
        raise PolmError(f"the index directory '{folder}' is corrupt ({type(err).__name__})",
                        fix="Rebuild it with `polm rag index`.") from None
    if len(rows) != manifest["chunks"] or store.ntotal - len(manifest["deleted"]) != len(rows):
        raise PolmError(f"the index directory '{folder}' is corrupt ({len(rows)} chunks, {store.ntotal} vectors)",
                        fix="Rebuild it with `polm rag index`.")
    index.store, index.next_id, index.deleted = store, manifest["next_id"], set(manifest["deleted"])
    index.truncated, index.doc_hashes = manifest["truncated_chunks"], dict(manifest["doc_sha256"])
    for row in rows:
        cid = row.pop("key")
        index.chunks[cid] = Chunk(**row)
        index.doc_chunks.setdefault(row["doc_id"], []).append(cid)
    return index
