"""`polm rag eval`: retrieval and answers measured separately on the same questions, with bootstrap CIs.

Retrieval rows give recall@k and MRR of the gold document per retriever; answer rows give EM, F1 and,
with passages shown, citation precision / recall and faithfulness, for closed-book, RAG and oracle
prompts, plus each mode's paired difference from closed-book (polm.eval.stats).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polm.errors import PolmError
from polm.eval.stats import paired_difference, summarize
from polm.rag import metrics
from polm.rag.answer import answer_text, closed_book_prompt, parse_citations, rag_prompt
from polm.rag.config import RagEvalConfig, RetrievalConfig
from polm.rag.index import Hit, RagIndex
from polm.rag.retrieve import lm_rerank, retrieve, unique_docs


def load_questions(ref: str) -> list[dict[str, Any]]:
    """Question records {id, question, answers: [answer, *aliases], doc_id?, passage?, title?} from a
    `builtin:` source or a JSONL file; a record without a question or an answer is a PolmError."""
    if ref.startswith("builtin:"):
        from polm.data.builtin import load_builtin

        rows = [(f"{ref}[{i}]", rec) for i, rec in enumerate(load_builtin(ref))]
    else:
        path = Path(ref)
        if not path.is_file():
            raise PolmError(f"question file '{ref}' does not exist", fix="Check questions= (a JSONL or builtin:...).")
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"{ref}:{n}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise PolmError(f"line is not valid JSON ({err.msg})", where=f"{ref}:{n}") from None
    if not rows:
        raise PolmError(f"the question set '{ref}' is empty", fix="Give records with 'question' and 'answer'.")
    return [_question(rec, where, i) for i, (where, rec) in enumerate(rows)]


def _question(rec: Any, where: str, index: int) -> dict[str, Any]:
    if not isinstance(rec, dict) or not str(rec.get("question", "")).strip():
        raise PolmError("the record has no 'question'", where=where, fix="Give every record a 'question' string.")
    answer = rec.get("answer")
    if answer is None or not str(answer).strip():
        raise PolmError("the question has no 'answer'", where=where,
                        fix="Give every record an 'answer' (a short string); `polm rag ask` needs none.")
    aliases = [str(a) for a in rec.get("aliases") or []]
    return {"id": str(rec.get("id", index)), "question": str(rec["question"]), "answers": [str(answer), *aliases],
            "doc_id": None if rec.get("doc_id") is None else str(rec["doc_id"]), "passage": rec.get("passage"),
            "title": rec.get("title", "")}


# --- retrieval ------------------------------------------------------------------------------------

def retrieval_row(ranked_docs: list[list[str]], questions: list[dict[str, Any]], ks: list[int],
                  seed: int = 0) -> dict[str, Any]:
    """{recall@k: summary, mrr: summary} over questions with a gold `doc_id`."""
    pairs = [(docs, q["doc_id"]) for docs, q in zip(ranked_docs, questions) if q["doc_id"] is not None]
    if not pairs:
        raise PolmError("no question names its gold document ('doc_id')",
                        fix="Retrieval metrics need doc_id per question (builtin:wiki-facts has it).")
    row = {f"recall@{k}": summarize([metrics.recall_at_k(d, g, k) for d, g in pairs], seed=seed) for k in ks}
    row["mrr"] = summarize([metrics.reciprocal_rank(d, g) for d, g in pairs], seed=seed)
    return row


def search(index: RagIndex, questions: list[str], cfg: RetrievalConfig, retriever: str, k: int,
           model: Any = None, rerank: bool = False) -> list[list[Hit]]:
    """Top-k hits per question; with `rerank`, the top `rerank_depth` reordered by the LM, then cut to k."""
    options = {"depth": cfg.depth} if retriever == "hybrid" else {}
    if not rerank:
        return retrieve(index, questions, k, retriever, options)
    hits = retrieve(index, questions, max(k, cfg.rerank_depth), retriever, options)
    return lm_rerank(model, questions, hits, k)


def retrieval_rows(index: RagIndex, questions: list[dict[str, Any]], cfg: RagEvalConfig,
                   model: Any = None) -> dict[str, Any]:
    texts, depth = [q["question"] for q in questions], max(cfg.ks)
    rows = {}
    plan = [(name, name, False) for name in cfg.retrievers]
    if cfg.rerank_row:
        plan.append((f"{cfg.retrieval.retriever}+rerank", cfg.retrieval.retriever, True))
    for label, name, rerank in plan:
        hits = search(index, texts, cfg.retrieval, name, depth, model, rerank)
        rows[label] = retrieval_row([unique_docs(h) for h in hits], questions, cfg.ks, cfg.seed)
    return rows


# --- answers --------------------------------------------------------------------------------------

def passages_for(mode: str, question: dict[str, Any], hits: list[Hit]) -> list[tuple[str, str]]:
    """(title, text) shown in the prompt: none closed-book, the hits for rag, the source passage for oracle."""
    if mode == "closed_book":
        return []
    if mode == "oracle":
        if not question.get("passage"):
            raise PolmError(f"question '{question['id']}' has no 'passage' for the oracle mode",
                            fix="Drop 'oracle' from modes, or give each question its source passage.")
        return [(question.get("title") or "", question["passage"])]
    return [(h.chunk.title, h.chunk.text) for h in hits]


def score_answer(response: str, question: dict[str, Any], passages: list[tuple[str, str]]) -> dict[str, Any]:
    """Per-question metrics of one response (citation metrics only when passages were shown)."""
    answer, answers = answer_text(response), question["answers"]
    out: dict[str, Any] = {"exact_match": metrics.exact_match(answer, answers), "f1": metrics.best_f1(answer, answers)}
    if passages:
        texts = [text for _, text in passages]
        cited = parse_citations(response)
        out.update(metrics.citation_scores(cited, texts, answers))
        out["faithfulness"] = metrics.faithfulness(answer, [texts[c - 1] for c in cited if 0 < c <= len(texts)])
        out["answer_in_context"] = float(any(metrics.contains_answer(t, answers) for t in texts))
    return out


def answer_records(model: Any, index: RagIndex | None, questions: list[dict[str, Any]], mode: str,
                   cfg: RagEvalConfig) -> list[dict[str, Any]]:
    """Generate (greedy, through ModelAdapter.generate -> polm.rollout.text.generate_text) and score."""
    texts = [q["question"] for q in questions]
    hits = search(index, texts, cfg.retrieval, cfg.retrieval.retriever, cfg.retrieval.k, model, cfg.retrieval.rerank) \
        if mode == "rag" else [[] for _ in questions]
    shown = [passages_for(mode, q, h) for q, h in zip(questions, hits)]
    prompts = [rag_prompt(q["question"], p) if p else closed_book_prompt(q["question"]) for q, p in zip(questions, shown)]
    responses = [r[0] for r in model.generate(prompts, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)]
    return [{"id": q["id"], "mode": mode, "question": q["question"], "answers": q["answers"], "response": r,
             "cited": parse_citations(r), "passages": [h.chunk.id for h in hit], "metrics": score_answer(r, q, p)}
            for q, r, p, hit in zip(questions, responses, shown, hits)]


def summarize_records(records: list[dict[str, Any]], seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean and bootstrap CI per metric, over the questions where the metric is defined (not None)."""
    names = list(dict.fromkeys(m for r in records for m in r["metrics"]))
    return {m: summarize([r["metrics"][m] for r in records if r["metrics"].get(m) is not None], seed=seed)
            for m in names}


def load_baseline(path: str | Path) -> tuple[str, dict[str, dict[str, dict[str, Any]]]]:
    """(model, {mode: {question id: record}}) of an earlier `polm rag eval` output directory."""
    folder = Path(path)
    try:
        model = json.loads((folder / "results.json").read_text())["config"]["model"]
        rows = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PolmError(f"baseline '{folder}' is not a `polm rag eval` output with answers ({type(err).__name__})",
                        fix="Point baseline= at the out directory of an earlier eval run that generated answers.") from None
    by_mode: dict[str, dict[str, dict[str, Any]]] = {}
    for rec in rows:
        by_mode.setdefault(rec["mode"], {})[str(rec["id"])] = rec
    return model, by_mode


def compare_to_baseline(by_mode: dict[str, list[dict[str, Any]]], baseline: str | Path,
                        seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each mode of this run minus the same mode of `baseline` on the same questions (paired by id):
    EM and F1 differences with CIs. Every question of this run must be in the baseline's mode."""
    model, base = load_baseline(baseline)
    out = {}
    for mode, recs in by_mode.items():
        if mode not in base:
            continue
        missing = [r["id"] for r in recs if str(r["id"]) not in base[mode]]
        if missing:
            raise PolmError(f"question '{missing[0]}' ({len(missing)} in all) is not in baseline '{baseline}' mode {mode}",
                            fix="Evaluate both runs on the same questions (the same questions= and seed).")
        pairs = [(base[mode][str(r["id"])]["metrics"], r["metrics"]) for r in recs]
        out[f"{mode} - baseline {mode}"] = {
            "baseline": str(baseline), "baseline_model": model,
            **{m: paired_difference([a[m] for a, _ in pairs], [b[m] for _, b in pairs], seed=seed)
               for m in ("exact_match", "f1")}}
    if not out:
        raise PolmError(f"baseline '{baseline}' shares no answer mode with this run ({', '.join(by_mode)})",
                        fix="Evaluate at least one mode the baseline has.")
    return out


def compare_modes(by_mode: dict[str, list[dict[str, Any]]], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each mode minus closed-book on the same questions: paired EM and F1 differences with CIs."""
    if "closed_book" not in by_mode:
        return {}
    base = by_mode["closed_book"]
    return {f"{mode} - closed_book": {m: paired_difference([r["metrics"][m] for r in base],
                                                           [r["metrics"][m] for r in recs], seed=seed)
                                      for m in ("exact_match", "f1")}
            for mode, recs in by_mode.items() if mode != "closed_book"}
