"""Text embedders for the dense index, by name: `minilm` (the embedded all-MiniLM-L6-v2 through
sentence-transformers) and `hashing` (feature hashing of words, no model: fast tests and a baseline).

Every embedder returns L2-normalised float32 rows, so inner product = cosine similarity.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

import numpy as np

from polm.errors import require
from polm.registry import Registry

EMBEDDERS = Registry("embedder")
MINILM_MAX_TOKENS = 256   # all-MiniLM-L6-v2 was trained on 256 word pieces; longer input is truncated


class Embedder(Protocol):
    """`id` names the model and its settings: an index refuses an embedder with another id."""

    id: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """[N, dim] float32, each row of unit L2 norm."""
        ...

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens the model would read from each text (before truncation), for a batch at once."""
        ...


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class HashingEmbedder:
    """Bag of lower-cased words hashed into `dim` buckets (sha1, sign from the next byte), normalised.
    Shares a direction with a query exactly when they share words: deterministic, no weights."""

    def __init__(self, dim: int = 256):
        self.dim, self.id = dim, f"hashing-{dim}"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                digest = hashlib.sha1(word.encode()).digest()
                out[i, int.from_bytes(digest[:4], "big") % self.dim] += 1.0 if digest[4] % 2 else -1.0
        return _normalise(out)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(re.findall(r"\w+", text)) for text in texts]


class SentenceTransformerEmbedder:
    """A sentence-transformers model on CPU (or `device`), read with at most `max_tokens` word pieces."""

    def __init__(self, path: str, model_id: str, *, max_tokens: int = MINILM_MAX_TOKENS, device: str = "cpu",
                 batch_size: int = 64):
        st = require("sentence_transformers", "rag", "the dense index")
        self.model = st.SentenceTransformer(path, device=device)
        self.model.max_seq_length = min(max_tokens, self.model.max_seq_length or max_tokens)
        self.dim = int(self.model.get_embedding_dimension())
        self.id, self.batch_size = f"{model_id}@{self.model.max_seq_length}", batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.model.tokenizer(texts, add_special_tokens=True)["input_ids"]]


@EMBEDDERS.register("hashing")
def hashing(dim: int = 256) -> HashingEmbedder:
    return HashingEmbedder(dim)


@EMBEDDERS.register("minilm")
def minilm(device: str = "cpu", batch_size: int = 64) -> SentenceTransformerEmbedder:
    """The embedded all-MiniLM-L6-v2 (`polm assets list`: all-minilm-l6-v2)."""
    from polm.assets import asset_file

    return SentenceTransformerEmbedder(str(asset_file("all-minilm-l6-v2")), "sentence-transformers/all-MiniLM-L6-v2",
                                       device=device, batch_size=batch_size)


def build_embedder(name: str, options: dict | None = None) -> Embedder:
    """The embedder registered as `name` (or a 'pkg.mod:factory' plug-in) with checked options."""
    from polm.registry import check_options

    factory = EMBEDDERS.get(name)
    check_options(factory, options or {}, where=f"embedder '{name}'")
    return factory(**(options or {}))
