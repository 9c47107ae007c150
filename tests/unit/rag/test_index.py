"""The index: save/reload gives the same ids, incremental add/delete equal a rebuild, refusals."""

from __future__ import annotations

import json

import pytest

from polm.errors import PolmError
from polm.rag.embedders import HashingEmbedder
from polm.rag.index import ChunkingConfig, DenseConfig, RagIndex, load_index, read_manifest

DOCS = [(f"d{i}", f"T{i}", text) for i, text in enumerate([
    "The cat sat on the warm mat near the door.", "A dog barks at the mailman every morning.",
    "Paris is the capital of France and sits on the Seine.", "Rome is the capital of Italy.",
    "The Nile is the longest river in Africa.", "Mount Everest is the highest mountain on Earth.",
    "Cats and dogs are common pets in many homes.", "The Seine flows through Paris into the sea."])]
QUERIES = ["capital city", "pets at home", "river", "highest mountain", "cat on a mat"]


def make(store: str = "flat", docs=DOCS, mode: str = "document") -> RagIndex:
    idx = RagIndex(HashingEmbedder(64), ChunkingConfig(mode=mode, size=5, overlap=2),
                   DenseConfig(embedder="hashing", embedder_options={"dim": 64}, store=store))
    idx.add(list(docs))
    return idx


def ids(idx: RagIndex, method: str, k: int = 4) -> list[list[tuple[str, float]]]:
    search = idx.dense_search if method == "dense" else idx.bm25_search
    return [[(h.chunk.id, round(h.score, 5)) for h in row] for row in search(QUERIES, k)]


@pytest.mark.parametrize("store", ["flat", "hnsw"])
def test_saved_and_reloaded_index_gives_the_same_results(tmp_path, store):
    idx = make(store, mode="tokens")
    idx.save(tmp_path / "ix")
    again = load_index(tmp_path / "ix", HashingEmbedder(64))
    for method in ("dense", "bm25"):
        assert ids(again, method) == ids(idx, method)
    assert again.corpus_hash() == idx.corpus_hash() and len(again.chunks) == len(idx.chunks) > len(DOCS)


def test_incremental_add_equals_a_rebuild():
    grown = make(docs=DOCS[:5])
    grown.add(DOCS[5:])
    rebuilt = make()
    for method in ("dense", "bm25"):
        assert ids(grown, method) == ids(rebuilt, method)
    assert grown.corpus_hash() == rebuilt.corpus_hash()


@pytest.mark.parametrize("store", ["flat", "hnsw"])
def test_add_then_delete_returns_to_the_same_results(store):
    idx = make(store)
    before = {m: ids(idx, m) for m in ("dense", "bm25")}
    hash_before = idx.corpus_hash()
    idx.add([("new", "New", "The capital river mountain of pets and a cat on a mat.")])
    assert ids(idx, "bm25") != before["bm25"]
    assert idx.delete(["new"]) == 1
    assert {m: ids(idx, m) for m in ("dense", "bm25")} == before
    assert idx.corpus_hash() == hash_before


def test_duplicate_and_unknown_documents_are_refused():
    idx = make()
    with pytest.raises(PolmError, match="document 'd0' is already in the index"):
        idx.add([DOCS[0]])
    with pytest.raises(PolmError, match="document 'zz' is not in the index"):
        idx.delete(["zz"])


def test_a_different_embedder_is_refused(tmp_path):
    make().save(tmp_path / "ix")
    with pytest.raises(PolmError, match="built with embedder 'hashing-64', not 'hashing-32'"):
        load_index(tmp_path / "ix", HashingEmbedder(32))


def test_missing_and_corrupt_index_directories(tmp_path):
    with pytest.raises(PolmError, match="no index at"):
        read_manifest(tmp_path / "nothing")
    make().save(tmp_path / "ix")
    (tmp_path / "ix" / "dense.faiss").write_bytes(b"garbage")
    with pytest.raises(PolmError, match="is corrupt"):
        load_index(tmp_path / "ix", HashingEmbedder(64))
    make().save(tmp_path / "ix2")
    (tmp_path / "ix2" / "chunks.jsonl").write_text("")
    with pytest.raises(PolmError, match=r"is corrupt \(0 chunks, 8 vectors\)"):
        load_index(tmp_path / "ix2", HashingEmbedder(64))
    (tmp_path / "ix3").mkdir()
    with pytest.raises(PolmError, match=r"corrupt \(index.json"):
        read_manifest(tmp_path / "ix3")


def test_a_failed_save_leaves_the_old_index(tmp_path, monkeypatch):
    idx = make()
    idx.save(tmp_path / "ix")
    before = (tmp_path / "ix" / "index.json").read_text()
    idx.add([("new", "New", "more text")])
    monkeypatch.setattr(RagIndex, "manifest", lambda self: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        idx.save(tmp_path / "ix")
    assert (tmp_path / "ix" / "index.json").read_text() == before
    assert json.loads(before)["documents"] == len(DOCS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]


def test_batched_bm25_equals_one_query_at_a_time():
    """bm25_search scores all queries in one bm25s call; a stop-words-only query still gets no hits."""
    idx = make(mode="tokens")
    queries = [*QUERIES, "the of and", "Seine Paris"]
    batched = idx.bm25_search(queries, 3)
    single = [idx.bm25_search([q], 3)[0] for q in queries]
    as_ids = lambda rows: [[(h.chunk.id, round(h.score, 6), h.rank) for h in row] for row in rows]  # noqa: E731
    assert as_ids(batched) == as_ids(single)
    assert batched[len(QUERIES)] == [] and batched[-1][0].chunk.doc_id in ("d2", "d7")


def test_chunks_longer_than_the_embedder_reads_are_counted():
    """An embedder that reads at most 5 tokens: of the chunks 'a b c d e f' (6) and 'g h' (2), one is cut."""
    from types import SimpleNamespace

    class Short(HashingEmbedder):
        model = SimpleNamespace(max_seq_length=5)

    idx = RagIndex(Short(64), ChunkingConfig(mode="document"), DenseConfig(embedder="hashing"))
    idx.add([("x", "", "a b c d e f"), ("y", "", "g h")])
    assert idx.truncated == 1 and Short(64).count_tokens(["a b c", ""]) == [3, 0]
