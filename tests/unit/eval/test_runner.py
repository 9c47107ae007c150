"""The runner: entries with CIs and records, paired comparisons matched by item id, the training hook."""

from __future__ import annotations

import json
import math

import pytest

from polm.eval.model import ModelAdapter
from polm.eval.runner import compare, evaluate, make_eval_fn, slug, without_records
from polm.eval.task import EvalSettings


@pytest.fixture()
def qa_file(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"question": f"Say {w}.", "answer": w, "category": "even" if i % 2 == 0 else "odd"}
            for i, w in enumerate(["hello", "world", "good", "morning", "thanks"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_writes_entries_with_intervals_and_records(tiny_llama, tiny_tokenizer, qa_file, tmp_path):
    model = ModelAdapter(tiny_llama, tiny_tokenizer, name="tiny")
    spec = f"qa?data={qa_file}"
    result = evaluate(model, [spec, "perplexity?n=3"], limit=4, out_dir=tmp_path / "out",
                      settings=EvalSettings(max_new_tokens=4))
    entry = result["tasks"][spec]
    assert entry["n"] == 4 and len(entry["records"]) == 4
    em = entry["metrics"]["exact_match"]
    assert em["value"] == sum(r["metrics"]["exact_match"] for r in entry["records"]) / 4
    assert em["ci_low"] <= em["value"] <= em["ci_high"] and em["n"] == 4
    assert set(entry["categories"]) == {"even", "odd"} and entry["categories"]["even"]["n"] == 2
    written = json.loads((tmp_path / "out" / f"{slug(spec)}.json").read_text())
    assert written["records"] == json.loads(json.dumps(entry["records"]))
    assert result["tasks"]["perplexity?n=3"]["n"] == 3
    assert "records" not in without_records(result)["tasks"][spec]


def test_compare_pairs_items_by_id():
    def result(model, scores):
        records = [{"id": i, "metrics": {"accuracy": s}} for i, s in scores]
        return {"model": model, "tasks": {"t": {"paired_metric": "accuracy", "higher_is_better": True,
                                                 "records": records}}}

    a = result("A", [(0, 0.0), (1, 1.0), (2, 0.0), (3, 1.0)])
    b = result("B", [(3, 1.0), (2, 1.0), (1, 1.0), (0, 1.0), (9, 0.0)])   # other order, an extra item
    out = compare(a, b)["t"]
    assert out["n"] == 4 and out["diff"] == pytest.approx(0.5)   # B - A on items 0..3: (1+0+1+0)/4
    assert out["model_a"] == "A" and out["model_b"] == "B"


def test_make_eval_fn_returns_flat_metrics_and_restores_training_mode(tiny_llama, tiny_tokenizer, qa_file):
    fn = make_eval_fn(tiny_llama, tiny_tokenizer, [f"qa?data={qa_file}", "perplexity?n=2"], limit=2,
                      settings=EvalSettings(max_new_tokens=3))
    tiny_llama.train()
    first = fn()
    assert tiny_llama.training
    qa = slug(f"qa?data={qa_file}")
    assert set(first) == {f"eval/{qa}/exact_match", f"eval/{qa}/f1", "eval/perplexity_n_2/perplexity",
                          "eval/perplexity_n_2/nll_per_token"}
    assert fn() == first   # greedy decoding, same items: a repeat gives the same numbers


class CountingModel:
    """A model double that records every call: generations answer 'hello', rolling scores are
    -len(text) over len(text.split()) tokens."""

    chat, name = False, "counting"

    def __init__(self):
        self.calls = []

    def format_prompt(self, prompt):
        return prompt

    def generate(self, prompts, **kwargs):
        self.calls.append(("generate", list(prompts), kwargs))
        return [["hello"] * kwargs["n"] for _ in prompts]

    def loglikelihood_rolling(self, texts):
        self.calls.append(("rolling", list(texts), {}))
        return [(-float(len(t)), len(t.split())) for t in texts]


def test_requests_of_all_tasks_are_batched_per_type_and_setting(qa_file, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text('{"question": "Greet.", "answer": "hello"}\n{"question": "Part.", "answer": "bye"}\n')
    specs = [f"qa?data={qa_file}", f"qa?data={other}", "arith:chain_sum?n=2", "perplexity?n=2", "perplexity?n=3"]
    model = CountingModel()
    result = evaluate(model, specs, limit=3, settings=EvalSettings())
    # qa tasks share max_new_tokens=64: one call for 3 + 2 prompts; arith (256 tokens) is its own group;
    # both perplexity tasks go in one rolling call.
    assert [(kind, len(inputs)) for kind, inputs, _ in model.calls] == [("generate", 5), ("generate", 2),
                                                                       ("rolling", 5)]
    assert model.calls[0][2]["max_new_tokens"] == 64 and model.calls[1][2]["max_new_tokens"] == 256
    qa_prompts = [r["prompt"] for spec in specs[:2] for r in result["tasks"][spec]["records"]]
    assert model.calls[0][1] == qa_prompts
    assert [r["metrics"]["exact_match"] for r in result["tasks"][specs[0]]["records"]] == [1.0, 0.0, 0.0]
    assert [r["metrics"]["exact_match"] for r in result["tasks"][specs[1]]["records"]] == [1.0, 0.0]
    texts = model.calls[2][1]
    ppl2 = result["tasks"]["perplexity?n=2"]
    assert [r["nll"] for r in ppl2["records"]] == [float(len(t)) for t in texts[:2]]
    assert ppl2["metrics"]["perplexity"]["value"] == pytest.approx(
        math.exp(sum(len(t) for t in texts[:2]) / sum(len(t.split()) for t in texts[:2])))
    assert result["tasks"]["perplexity?n=3"]["n"] == 3
