"""The YAML configs of `polm rag index`, `polm rag eval` and `polm rag raft` (see configs/rag_*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from polm.errors import PolmError
from polm.rag.index import ChunkingConfig, DenseConfig

Mode = Literal["closed_book", "rag", "oracle"]


@dataclass
class RagIndexConfig:
    """Build `out` from `corpus`, or update it in place when it exists: documents whose text changed
    or that left the corpus are deleted, new or changed ones added (nothing else is re-embedded)."""

    corpus: str = "builtin:wiki-summaries"
    text_field: str = "text"
    id_field: str = "id"             # absent: the record's title, else its position
    out: str = "runs/rag/wiki-index"
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)

    def validate(self) -> None:
        if self.chunking.mode == "tokens" and not 0 <= self.chunking.overlap < self.chunking.size:
            raise PolmError(f"chunking.overlap={self.chunking.overlap} must be in [0, chunking.size={self.chunking.size})",
                            fix="Lower chunking.overlap.")


@dataclass
class RetrievalConfig:
    """`retriever`: bm25 | dense | hybrid (RRF of both, each cut at `depth`); `rerank`: reorder the top
    `rerank_depth` by the LM's log p(question | passage) before keeping k."""

    retriever: str = "hybrid"
    k: int = 5
    depth: int = 50
    rerank: bool = False
    rerank_depth: int = 20

    def validate(self) -> None:
        for name in ("k", "depth", "rerank_depth"):
            if getattr(self, name) <= 0:
                raise PolmError(f"retrieval.{name} must be positive, got {getattr(self, name)}",
                                fix=f"Set retrieval.{name} to 1 or more.")


@dataclass
class RagEvalConfig:
    """Retrieval rows for each of `retrievers` at `ks` (and `hybrid+rerank` when `rerank_row`), then
    answers of `model` in each of `modes` on the same questions. `generate: false` = retrieval only."""

    index: str = "runs/rag/wiki-index"
    questions: str = "builtin:wiki-facts?split=test&n=200&seed=0"
    model: str = "smollm2-135m-instruct"
    out: str = "runs/rag/eval"
    retrievers: list[str] = field(default_factory=lambda: ["bm25", "dense", "hybrid"])
    ks: list[int] = field(default_factory=lambda: [1, 5, 20])
    rerank_row: bool = False
    generate: bool = True
    modes: list[Mode] = field(default_factory=lambda: ["closed_book", "rag", "oracle"])
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    max_new_tokens: int = 48
    batch_size: int = 16
    chat: bool | Literal["auto"] = "auto"   # auto: the chat template when the tokenizer has one
    seed: int = 0
    baseline: str | None = None             # an earlier eval's out dir: paired differences per shared mode

    def validate(self) -> None:
        bad = [k for k in self.ks if k <= 0]
        if bad:
            raise PolmError(f"ks holds {bad[0]}; every k must be positive", fix="Write e.g. ks: [1, 5, 20].")
        self.retrieval.validate()


@dataclass
class RaftConfig:
    """RAFT (Zhang et al. 2024) SFT data: per question the oracle passage plus `num_distractors` others
    (`retrieved`: the index's top hits from other documents, hard negatives; `random`: random corpus
    documents), the oracle kept with probability `oracle_p`, passages shuffled."""

    questions: str = "builtin:wiki-facts?split=train&n=2000&seed=0"
    index: str = "runs/rag/wiki-index"
    distractors: Literal["retrieved", "random"] = "retrieved"
    retriever: str = "bm25"
    num_distractors: int = 4
    oracle_p: float = 0.8
    seed: int = 0
    out: str = "runs/rag/raft_train.jsonl"

    def validate(self) -> None:
        if not 0.0 <= self.oracle_p <= 1.0:
            raise PolmError(f"oracle_p={self.oracle_p} is not a probability", fix="Use a value in [0, 1], e.g. 0.8.")
        if self.num_distractors < 0:
            raise PolmError(f"num_distractors={self.num_distractors} is negative", fix="Use 0 or more.")
