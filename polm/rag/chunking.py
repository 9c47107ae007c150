"""Documents into chunks: one chunk per document, or windows of whitespace tokens with overlap.

A chunk keeps its document id and token span, so retrieval scores map back to gold documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from polm.errors import PolmError

ChunkMode = Literal["document", "tokens"]


@dataclass(frozen=True)
class Chunk:
    """Tokens [start, end) of document `doc_id` (whitespace tokens); `id` = 'doc_id#i'."""

    id: str
    doc_id: str
    title: str
    text: str
    start: int
    end: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "doc_id": self.doc_id, "title": self.title, "text": self.text,
                "start": self.start, "end": self.end}


def token_windows(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows of `size` tokens, each starting `size - overlap` after the last; the last
    window ends at n_tokens. 10 tokens, size 4, overlap 1 -> (0,4) (3,7) (6,10)."""
    if size <= 0 or not 0 <= overlap < size:
        raise PolmError(f"chunk size {size} with overlap {overlap} is not a valid window",
                        fix="Use size > 0 and 0 <= overlap < size.")
    stride, spans, start = size - overlap, [], 0
    while True:
        end = min(start + size, n_tokens)
        spans.append((start, end))
        if end >= n_tokens:
            return spans
        start += stride


def chunk_document(doc_id: str, text: str, *, title: str = "", mode: ChunkMode = "document",
                   size: int = 128, overlap: int = 32) -> list[Chunk]:
    """The chunks of one document; a document without text is a PolmError."""
    words = text.split()
    if not words:
        raise PolmError(f"document '{doc_id}' has no text", fix="Drop it from the corpus or give it a 'text'.")
    if mode == "document":
        return [Chunk(f"{doc_id}#0", doc_id, title, " ".join(words), 0, len(words))]
    return [Chunk(f"{doc_id}#{i}", doc_id, title, " ".join(words[a:b]), a, b)
            for i, (a, b) in enumerate(token_windows(len(words), size, overlap))]


def corpus_documents(records: list[dict[str, Any]], *, text_field: str = "text",
                     id_field: str = "id", where: str = "corpus") -> list[tuple[str, str, str]]:
    """(doc_id, title, text) per record. The id is `id_field`, else the title, else the position; ids
    must be unique and every record must have a string `text_field`."""
    if not records:
        raise PolmError("the corpus is empty", where=where, fix="Point corpus= at records with a 'text' field.")
    out, seen = [], set()
    for i, rec in enumerate(records):
        text = rec.get(text_field)
        if not isinstance(text, str):
            raise PolmError(f"record {i} has no string field '{text_field}'", where=where,
                            fix=f"Give every document a '{text_field}', or set text_field=.")
        doc_id = str(rec.get(id_field, rec.get("title", i)))
        if doc_id in seen:
            raise PolmError(f"document id '{doc_id}' occurs twice", where=where, fix="Document ids must be unique.")
        seen.add(doc_id)
        out.append((doc_id, str(rec.get("title", "")), text))
    return out
