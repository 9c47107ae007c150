"""`polm rag index / ask / eval / raft` through the CLI on a tiny corpus, the hashing embedder and a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = [{"id": f"d{i}", "title": title, "text": text} for i, (title, text) in enumerate([
    ("Acme", "Acme Corporation is a company in Springfield. It was founded in 1949."),
    ("Nile", "The Nile is the longest river in Africa, flowing 6650 km to the sea."),
    ("Everest", "Mount Everest is the highest mountain on Earth, first climbed in 1953."),
    ("Paris", "Paris is the capital of France and sits on the river Seine."),
    ("Rome", "Rome is the capital of Italy and was founded in 753 BC."),
])]
QUESTIONS = [
    {"id": "q0", "question": "In what year was Acme Corporation founded?", "answer": "1949", "doc_id": "d0"},
    {"id": "q1", "question": "How long is the Nile river in km?", "answer": "6650", "doc_id": "d1"},
    {"id": "q2", "question": "When was Mount Everest first climbed?", "answer": "1953", "doc_id": "d2"},
    {"id": "q3", "question": "Which river does Paris sit on?", "answer": "Seine", "doc_id": "d3"},
]


def polm(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "polm.cli", "rag", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def built(tmp_path) -> tuple[Path, Path, Path]:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", DOCS)
    questions = write_jsonl(tmp_path / "q.jsonl", [{**q, "passage": DOCS[int(q["doc_id"][1])]["text"],
                                                    "title": DOCS[int(q["doc_id"][1])]["title"]} for q in QUESTIONS])
    index = tmp_path / "ix"
    proc = polm("index", "configs/rag_index.yaml", f"corpus={corpus}", f"out={index}", "dense.embedder=hashing",
                "chunking.mode=document")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["documents"], result["chunks"], result["added_chunks"], result["updated"]) == (5, 5, 5, False)
    return corpus, questions, index


def test_index_updates_incrementally(built, tmp_path):
    corpus, _, index = built
    write_jsonl(corpus, [*DOCS[:4], {**DOCS[4], "text": "Rome is the capital of Italy."},
                         {"id": "d5", "title": "Nile2", "text": "A second river text."}])
    proc = polm("index", "configs/rag_index.yaml", f"corpus={corpus}", f"out={index}", "dense.embedder=hashing",
                "chunking.mode=document")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["documents"], result["added_chunks"], result["deleted_chunks"], result["updated"]) == (6, 2, 1, True)
    assert json.loads((index / "index.json").read_text())["documents"] == 6


def test_ask_prints_cited_passages_and_an_answer(built, tiny_model_dir):
    _, _, index = built
    proc = polm("ask", "--index", str(index), "--question", "Which river does Paris sit on?", "--retriever", "bm25",
                "-k", "2", "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--chat", "false")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["passages"][0]["id"] == "d3#0" and [p["n"] for p in out["passages"]] == [1, 2]
    assert isinstance(out["response"], str) and isinstance(out["cited"], list)


def test_eval_writes_retrieval_and_answer_rows_with_cis(built, tiny_model_dir, tmp_path):
    from polm.rag.embedders import HashingEmbedder
    from polm.rag.index import load_index
    from polm.rag.metrics import reciprocal_rank
    from polm.rag.retrieve import retrieve, unique_docs

    _, questions, index = built
    out = tmp_path / "ev"
    proc = polm("eval", "configs/rag_eval.yaml", f"index={index}", f"questions={questions}",
                f"model={tiny_model_dir}", f"out={out}", "max_new_tokens=6", "ks=[1,3]", "chat=false",
                "retrieval.k=2", "retrieval.rerank_depth=3")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "results.json").read_text())
    assert set(result["retrieval"]) == {"bm25", "dense", "hybrid", "hybrid+rerank"}
    here = load_index(index, HashingEmbedder())
    ranked = [unique_docs(h) for h in retrieve(here, [q["question"] for q in QUESTIONS], 3, "bm25")]
    mrr = sum(reciprocal_rank(r, q["doc_id"]) for r, q in zip(ranked, QUESTIONS)) / 4
    assert result["retrieval"]["bm25"]["mrr"]["value"] == pytest.approx(mrr)
    assert set(result["answers"]) == {"closed_book", "rag", "oracle"}
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    rag = [r for r in records if r["mode"] == "rag"]
    assert len(rag) == 4 and all(len(r["passages"]) == 2 for r in rag)
    em = result["answers"]["rag"]["exact_match"]
    assert em["value"] == pytest.approx(sum(r["metrics"]["exact_match"] for r in rag) / 4)
    assert em["ci_low"] <= em["value"] <= em["ci_high"] and em["n"] == 4
    assert result["answers"]["oracle"]["answer_in_context"]["value"] == 1.0
    assert "rag - closed_book" in result["comparisons"] and "polm rag eval: 4 questions" in proc.stdout
    # the same model again against the first run as baseline: the same greedy answers, so Δ = 0
    again = polm("eval", "configs/rag_eval.yaml", f"index={index}", f"questions={questions}", "retrievers=[]",
                 f"model={tiny_model_dir}", f"out={tmp_path / 'ev2'}", "max_new_tokens=6", "chat=false",
                 "retrieval.k=2", "modes=[rag]", f"baseline={out}")
    assert again.returncode == 0, again.stderr
    diff = json.loads((tmp_path / "ev2" / "results.json").read_text())["comparisons"]["rag - baseline rag"]
    assert diff["exact_match"]["diff"] == 0.0 and diff["f1"]["diff"] == 0.0 and diff["f1"]["n"] == 4


def test_raft_data_trains_with_polm_sft(built, tiny_model_dir, tmp_path):
    _, questions, index = built
    out = tmp_path / "raft.jsonl"
    proc = polm("raft", "configs/rag_raft.yaml", f"questions={questions}", f"index={index}", f"out={out}",
                "num_distractors=2", "oracle_p=1.0")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and all(r["provenance"]["oracle"] for r in records)
    assert all("##begin_quote##" in r["completion"] for r in records)
    run = tmp_path / "sft"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    sft = subprocess.run([sys.executable, "-m", "polm.cli", "sft", f"model.name={tiny_model_dir}", f"data.train={out}",
                          f"output_dir={run}", "train.max_steps=2", "train.micro_batch_size=2", "train.progress=false",
                          "train.tensorboard=false", "data.max_length=256", "data.chat=false"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert sft.returncode == 0, sft.stderr
    assert (run / "final").is_dir()


@pytest.mark.parametrize("args, message", [
    (["ask", "--index", "{tmp}/missing", "--question", "x"], "no index at"),
    (["eval", "configs/rag_eval.yaml", "index={ix}", "retrievers=[hybird]", "generate=false"],
     "unknown retriever 'hybird'"),
    (["ask", "--index", "{ix}", "--question", "x", "-k", "0"], "k must be a positive integer"),
    (["ask", "--index", "{ix}", "--question", "x", "--embedder-option", "dim=32"],
     "built with embedder 'hashing-256', not 'hashing-32'"),
    (["index", "configs/rag_index.yaml", "corpus={tmp}/empty.jsonl", "out={tmp}/e", "dense.embedder=hashing"],
     "is empty"),
    (["index", "configs/rag_index.yaml", "corpus={tmp}/blank.jsonl", "out={tmp}/b", "dense.embedder=hashing"],
     "field 'text' is empty"),
    (["eval", "configs/rag_eval.yaml", "index={ix}", "questions={tmp}/noanswer.jsonl", "generate=false"],
     "the question has no 'answer'"),
])
def test_bad_input_is_one_clear_message(built, tmp_path, args, message):
    _, _, index = built
    (tmp_path / "empty.jsonl").write_text("")
    write_jsonl(tmp_path / "blank.jsonl", [{"id": "a", "text": "  "}])
    write_jsonl(tmp_path / "noanswer.jsonl", [{"question": "Q?"}])
    proc = polm(*[a.format(tmp=tmp_path, ix=index) for a in args])
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "e").exists()
