"""`polm rag index | ask | eval | raft`: build or update an index, answer with citations, measure, make RAFT data.

    polm rag index configs/rag_index.yaml
    polm rag ask   --index runs/rag/wiki-index --model smollm2-135m-instruct --question "In what year ...?"
    polm rag eval  configs/rag_eval.yaml
    polm rag raft  configs/raft_sft.yaml      # then: polm sft configs/sft_lora.yaml data=runs/rag/raft_train.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from polm.config import add_config_arguments, config_from_args, to_dict
from polm.errors import PolmError
from polm.io import atomic_write_json, atomic_write_text
from polm.rag.config import RaftConfig, RagEvalConfig, RagIndexConfig, RetrievalConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rag_command", metavar="COMMAND", required=True)
    for name, text, example in (("index", "build or incrementally update an index", "configs/rag_index.yaml"),
                                ("eval", "retrieval and answer metrics with CIs", "configs/rag_eval.yaml"),
                                ("raft", "write RAFT SFT data (oracle + distractors, quoted CoT)", "configs/raft_sft.yaml")):
        add_config_arguments(sub.add_parser(name, help=text, description=text), example)
    ask = sub.add_parser("ask", help="answer questions from retrieved passages, citing them as [n]")
    ask.add_argument("--index", required=True, help="an index directory from `polm rag index`")
    ask.add_argument("--question", action="append", default=[], required=True, help="a question (repeatable)")
    ask.add_argument("--model", default=None, help="model or adapter; without it only the passages are printed")
    ask.add_argument("--retriever", default="hybrid", help="bm25 | dense | hybrid")
    ask.add_argument("-k", type=int, default=5, help="passages in the prompt")
    ask.add_argument("--rerank", action="store_true", help="reorder the top 20 by the LM's log p(question | passage)")
    ask.add_argument("--embedder-option", action="append", default=[], metavar="KEY=VALUE")
    ask.add_argument("--max-new-tokens", type=int, default=64)
    ask.add_argument("--chat", default="auto", choices=["auto", "true", "false"])


def run(args: argparse.Namespace) -> int:
    return {"index": run_index, "ask": run_ask, "eval": run_eval, "raft": run_raft}[args.rag_command](args)


# --- shared ------------------------------------------------------------------------------------------

def open_index(path: str, options: dict[str, Any] | None = None):
    """Load an index with the embedder its manifest names (registered name = the id's family)."""
    from polm.rag.embedders import build_embedder
    from polm.rag.index import load_index, read_manifest

    manifest = read_manifest(path)
    name = manifest["dense"]["embedder"]
    merged = {**manifest["dense"].get("embedder_options", {}), **(options or {})}
    return load_index(path, build_embedder(name, merged))


def _load_model(ref: str, chat: str | bool, batch_size: int = 16):
    from polm.eval.model import ModelAdapter

    mode = chat if chat == "auto" else ("true" if chat in (True, "true") else "false")
    return ModelAdapter.load(ref, chat=mode, batch_size=batch_size)


def _say(text: str) -> None:
    print(f"polm rag: {text}", file=sys.stderr)


# --- index -------------------------------------------------------------------------------------------

def run_index(args: argparse.Namespace) -> int:
    cfg = config_from_args(RagIndexConfig, args)
    result = build_or_update(cfg)
    print(json.dumps(result))
    return 0


def build_or_update(cfg: RagIndexConfig) -> dict[str, Any]:
    """Build `cfg.out`, or bring an existing index there in line with the corpus (add / delete only)."""
    import hashlib

    from polm.data.loaders import load_records
    from polm.rag.chunking import corpus_documents
    from polm.rag.embedders import build_embedder
    from polm.rag.index import RagIndex, load_index

    docs = corpus_documents(load_records(cfg.corpus, require_targets=False).records,
                            text_field=cfg.text_field, id_field=cfg.id_field, where=cfg.corpus)
    embedder = build_embedder(cfg.dense.embedder, cfg.dense.embedder_options)
    start = time.perf_counter()
    exists = (Path(cfg.out) / "index.json").is_file()
    index = load_index(cfg.out, embedder) if exists else RagIndex(embedder, cfg.chunking, cfg.dense)
    wanted = {d: hashlib.sha256(text.encode()).hexdigest() for d, _, text in docs}
    stale = [d for d, h in index.doc_hashes.items() if wanted.get(d) != h]
    removed = index.delete(stale) if stale else 0
    fresh = [doc for doc in docs if doc[0] not in index.doc_chunks]
    added = index.add(fresh)
    index.save(cfg.out)
    atomic_write_text(Path(cfg.out) / "config.json", json.dumps(to_dict(cfg), indent=1))
    result = {"index": cfg.out, "documents": len(index.doc_chunks), "chunks": len(index.chunks),
              "added_chunks": added, "deleted_chunks": removed, "updated": exists,
              "truncated_chunks": index.truncated, "corpus_sha256": index.corpus_hash(),
              "seconds": round(time.perf_counter() - start, 2)}
    _say(f"{'updated' if exists else 'built'} {cfg.out}: {result['documents']} documents, {result['chunks']} chunks "
         f"(+{added} / -{removed})")
    return result


# --- ask ---------------------------------------------------------------------------------------------

def run_ask(args: argparse.Namespace) -> int:
    from polm.data.builtin import parse_value
    from polm.rag.answer import answer_text, parse_citations, rag_prompt
    from polm.rag.evaluate import search

    options = {key: parse_value(value) for key, _, value in (o.partition("=") for o in args.embedder_option)}
    index = open_index(args.index, options)
    model = _load_model(args.model, args.chat) if args.model else None
    if args.rerank and model is None:
        raise PolmError("--rerank scores passages with a language model", fix="Pass --model too.")
    cfg = RetrievalConfig(retriever=args.retriever, k=args.k, rerank=args.rerank)
    hits = search(index, args.question, cfg, args.retriever, args.k, model, args.rerank)
    prompts = [rag_prompt(q, [(h.chunk.title, h.chunk.text) for h in row]) for q, row in zip(args.question, hits)]
    responses = model.generate(prompts, max_new_tokens=args.max_new_tokens) if model else [[None]] * len(prompts)
    for q, row, resp in zip(args.question, hits, responses):
        passages = [{"n": h.rank, "id": h.chunk.id, "score": round(h.score, 4), "title": h.chunk.title} for h in row]
        out = {"question": q, "passages": passages}
        if resp[0] is not None:
            out.update(response=resp[0], answer=answer_text(resp[0]), cited=parse_citations(resp[0]))
        print(json.dumps(out, ensure_ascii=False))
    return 0


# --- eval --------------------------------------------------------------------------------------------

def run_eval(args: argparse.Namespace) -> int:
    cfg = config_from_args(RagEvalConfig, args)
    result = evaluate_config(cfg)
    print(format_table(result))
    return 0


def evaluate_config(cfg: RagEvalConfig) -> dict[str, Any]:
    """The whole eval: retrieval rows, then answer rows and paired differences; written to cfg.out."""
    from polm.rag.evaluate import (
        answer_records,
        compare_modes,
        compare_to_baseline,
        load_baseline,
        load_questions,
        retrieval_rows,
        summarize_records,
    )
    from polm.rag.retrieve import RETRIEVERS

    for name in [*cfg.retrievers, cfg.retrieval.retriever]:
        RETRIEVERS.get(name)                       # an unknown name fails before anything loads
    questions = load_questions(cfg.questions)
    if cfg.baseline:
        load_baseline(cfg.baseline)                # a bad baseline fails before anything loads
    needs_index = bool(cfg.retrievers) or "rag" in cfg.modes
    index = open_index(cfg.index) if needs_index else None
    needs_model = cfg.generate or cfg.rerank_row or cfg.retrieval.rerank
    model = _load_model(cfg.model, cfg.chat, cfg.batch_size) if needs_model else None
    out = Path(cfg.out)
    result: dict[str, Any] = {"config": to_dict(cfg), "questions": len(questions),
                              "retrieval": retrieval_rows(index, questions, cfg, model) if cfg.retrievers else {}}
    if cfg.generate:
        by_mode = {mode: answer_records(model, index, questions, mode, cfg) for mode in cfg.modes}
        result["answers"] = {mode: summarize_records(recs, cfg.seed) for mode, recs in by_mode.items()}
        result["comparisons"] = compare_modes(by_mode, cfg.seed)
        if cfg.baseline:
            result["comparisons"].update(compare_to_baseline(by_mode, cfg.baseline, cfg.seed))
        atomic_write_text(out / "records.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                         for recs in by_mode.values() for r in recs))
    atomic_write_json(out / "results.json", result)
    return result


def format_table(result: dict[str, Any]) -> str:
    """Plain-text tables of the retrieval and answer rows: value [ci_low, ci_high]."""
    def cell(s: dict[str, float]) -> str:
        return f"{s['value']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"

    lines = [f"polm rag eval: {result['questions']} questions"]
    for label, row in result["retrieval"].items():
        lines.append(f"  {label:<16} " + "  ".join(f"{m} {cell(s)}" for m, s in row.items()))
    for mode, row in result.get("answers", {}).items():
        lines.append(f"  {mode:<16} " + "  ".join(f"{m} {cell(s)}" for m, s in row.items() if s["n"]))
    for label, diff in result.get("comparisons", {}).items():
        lines.append(f"  {label:<16} " + "  ".join(
            f"Δ{m} {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" for m, d in diff.items()
            if m in ("exact_match", "f1")))
    return "\n".join(lines)


# --- raft --------------------------------------------------------------------------------------------

def run_raft(args: argparse.Namespace) -> int:
    from polm.rag.evaluate import load_questions
    from polm.rag.raft import raft_records
    from polm.rag.retrieve import RETRIEVERS

    cfg = config_from_args(RaftConfig, args)
    RETRIEVERS.get(cfg.retriever)
    questions = load_questions(cfg.questions)
    for q in questions:
        if not q.get("passage") or q["doc_id"] is None:
            raise PolmError(f"question '{q['id']}' has no 'passage' and 'doc_id'", where=cfg.questions,
                            fix="RAFT needs each question's source passage (builtin:wiki-facts has them).")
    records = raft_records(open_index(cfg.index), questions, kind=cfg.distractors, retriever=cfg.retriever,
                           k=cfg.num_distractors, oracle_p=cfg.oracle_p, seed=cfg.seed, source=cfg.questions)
    atomic_write_text(cfg.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    kept = sum(r["provenance"]["oracle"] for r in records)
    atomic_write_json(Path(cfg.out).with_suffix(".stats.json"),
                      {"builder": "raft", "config": to_dict(cfg), "records": len(records), "with_oracle": kept})
    print(f"wrote {len(records)} RAFT records to {cfg.out} ({kept} with the oracle passage)")
    return 0
