"""Chunk boundaries: token windows with overlap, one chunk per document, corpus checks."""

from __future__ import annotations

import pytest

from polm.errors import PolmError
from polm.rag.chunking import chunk_document, corpus_documents, token_windows


def test_token_windows_by_hand():
    assert token_windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert token_windows(10, 5, 0) == [(0, 5), (5, 10)]
    assert token_windows(3, 5, 2) == [(0, 3)]
    assert token_windows(11, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10), (8, 11)]


def test_token_chunks_keep_spans_and_text():
    chunks = chunk_document("d", "a b c d e f g", title="T", mode="tokens", size=3, overlap=1)
    assert [(c.id, c.text, c.start, c.end) for c in chunks] == [
        ("d#0", "a b c", 0, 3), ("d#1", "c d e", 2, 5), ("d#2", "e f g", 4, 7)]
    assert {c.doc_id for c in chunks} == {"d"} and chunks[0].title == "T"


def test_document_mode_is_one_chunk_with_whitespace_normalised():
    (chunk,) = chunk_document("d", "  one\n two   three ", mode="document")
    assert (chunk.id, chunk.text, chunk.start, chunk.end) == ("d#0", "one two three", 0, 3)


def test_bad_windows_and_empty_documents_are_refused():
    with pytest.raises(PolmError, match="not a valid window"):
        token_windows(10, 4, 4)
    with pytest.raises(PolmError, match="document 'x' has no text"):
        chunk_document("x", "   ")


def test_corpus_documents_ids_and_errors():
    docs = corpus_documents([{"text": "a", "title": "A"}, {"text": "b", "id": 7}, {"text": "c"}])
    assert docs == [("A", "A", "a"), ("7", "", "b"), ("2", "", "c")]
    with pytest.raises(PolmError, match="the corpus is empty"):
        corpus_documents([])
    with pytest.raises(PolmError, match="record 0 has no string field 'text'"):
        corpus_documents([{"title": "A"}])
    with pytest.raises(PolmError, match="document id 'A' occurs twice"):
        corpus_documents([{"text": "a", "title": "A"}, {"text": "b", "title": "A"}])
