"""Prompting modes, few-shot disjointness, and generation tasks' requests and scoring."""

from __future__ import annotations

import pytest

from polm.errors import PolmError
from polm.eval.builtin_tasks import GSM8KTask
from polm.eval.prompting import COT_TRIGGER, build_prompt, select_exemplars
from polm.eval.registry import get_task
from polm.eval.runner import evaluate_task
from polm.eval.task import EvalSettings


def test_fewshot_exemplars_never_come_from_test_items():
    task = get_task("gsm8k")
    items = task.load_items()[:100]
    ex = select_exemplars(task, items, 8, seed=1234)
    test_ids, test_qs = {i["id"] for i in items}, {i["prompt"] for i in items}
    assert len(ex) == 8 and not {e["id"] for e in ex} & test_ids and not {e["prompt"] for e in ex} & test_qs
    assert ex == select_exemplars(task, items, 8, seed=1234)           # fixed seed: same exemplars
    with pytest.raises(PolmError, match="no items left for few-shot"):
        select_exemplars(task, task.load_items(), 3, seed=1234)


def test_arith_exemplars_come_from_another_seed_and_skip_shared_questions():
    task = get_task("arith:basic_arithmetic?min_terms=2&max_terms=2&max_digits=1")
    items = task.load_items(150)
    pool = task.exemplar_pool(items)
    test_qs = {i["prompt"] for i in items}
    fresh = [p for p in pool if p["prompt"] not in test_qs]
    assert len(fresh) < len(pool)   # 1-digit sums repeat across seeds: the filter has work to do
    ex = select_exemplars(task, items, len(fresh), seed=0)
    assert not {e["prompt"] for e in ex} & test_qs
    with pytest.raises(PolmError, match="few-shot exemplars outside the evaluated items"):
        select_exemplars(task, items, len(fresh) + 1, seed=0)


def test_qa_fewshot_pool_drops_questions_that_are_test_items(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"question": "Capital of France?", "answer": "Paris"}\n'
                                         '{"question": "Capital of Italy?", "answer": "Rome"}\n')
    (tmp_path / "dev.jsonl").write_text('{"question": "Capital of France?", "answer": "Paris"}\n'
                                        '{"question": "Capital of Spain?", "answer": "Madrid"}\n')
    task = get_task(f"qa?data={tmp_path}/test.jsonl&fewshot={tmp_path}/dev.jsonl")
    items = task.load_items()
    assert [e["question"] for e in select_exemplars(task, items, 1, seed=0)] == ["Capital of Spain?"]
    with pytest.raises(PolmError, match="only 1 few-shot exemplars"):
        select_exemplars(task, items, 2, seed=0)


def test_prompt_formats_per_mode():
    task = GSM8KTask()
    item = {"prompt": "What is 2+3?", "completion": "2+3=5\n#### 5"}
    ex = {"prompt": "What is 1+1?", "completion": "1+1=2\n#### 2"}
    q, qe = task.question(item), task.question(ex)
    assert build_prompt(task, item, [], "zero-shot", chat=True) == [{"role": "user", "content": q}]
    assert build_prompt(task, item, [], "cot", chat=True)[-1]["content"] == f"{q}\n{COT_TRIGGER}"
    assert build_prompt(task, item, [ex], "few-shot", chat=True) == [
        {"role": "user", "content": qe}, {"role": "assistant", "content": "1+1=2\nAnswer: 2"},
        {"role": "user", "content": q}]
    assert build_prompt(task, item, [ex], "few-shot", chat=False) == f"Q: {qe}\nA: 1+1=2\nAnswer: 2\n\nQ: {q}\nA:"
    assert build_prompt(task, item, [], "cot", chat=False) == f"Q: {q}\nA: {COT_TRIGGER}"


class ScriptedModel:
    """A model double whose samples are given per prompt, to check voting and scoring exactly."""

    chat = False

    def __init__(self, samples: list[list[str]]):
        self.samples, self.calls = samples, []

    def format_prompt(self, prompt):
        return prompt

    def generate(self, prompts, **kwargs):
        self.calls.append(kwargs)
        return self.samples[:len(prompts)]


def test_self_consistency_scores_the_majority_answer():
    items = [{"id": 0, "prompt": "q0", "answer": "5"}, {"id": 1, "prompt": "q1", "answer": "7"}]
    model = ScriptedModel([["Answer: 5", "Answer: 6", "so 5.0", "Answer: 6", "Answer: 5"],
                           ["Answer: 8", "Answer: 8", "Answer: 7", "", "x"]])
    records = evaluate_task(GSM8KTask(), model, items, EvalSettings(mode="self-consistency", samples=5))
    assert model.calls[0]["n"] == 5 and model.calls[0]["temperature"] == 0.7
    assert [r["answer"] for r in records] == ["5", "8"]
    assert [r["metrics"]["accuracy"] for r in records] == [1.0, 0.0]
    assert records[0]["votes"] == ["5", "6", "5", "6", "5"]
    greedy = evaluate_task(GSM8KTask(), ScriptedModel([["Answer: 6"]]), items[:1], EvalSettings())
    assert greedy[0]["metrics"]["accuracy"] == 0.0 and "votes" not in greedy[0]


def test_scoring_is_a_pure_function_of_items_and_responses():
    import copy

    from polm.eval.builtin_tasks import GPQADiamondTask
    from polm.eval.task import GenerateRequest, LoglikelihoodRequest, PromptFormat

    items = [{"id": 0, "prompt": "q0", "answer": "5"}, {"id": 1, "prompt": "q1", "answer": "7"}]
    settings = EvalSettings(mode="self-consistency", samples=3)
    requests = GSM8KTask().requests(items, settings, PromptFormat(chat=False, format_prompt=str))
    assert requests[0] == [GenerateRequest(f"Q: {GSM8KTask().question(items[0])}\nA: {COT_TRIGGER}",
                                           max_new_tokens=320, temperature=0.7, n=3,
                                           stop=("\n\nQ:", "\nQ:"), seed=1234)]
    responses = [[["Answer: 5", "Answer: 6", "Answer: 5"]], [["Answer: 8", "Answer: 7", "Answer: 8"]]]
    frozen = copy.deepcopy((items, requests, responses))
    records = GSM8KTask().score_items(items, requests, responses)
    assert [(r["id"], r["answer"], r["metrics"]["accuracy"], r["votes"]) for r in records] == [
        (0, "5", 1.0, ["5", "6", "5"]), (1, "8", 0.0, ["8", "7", "8"])]
    assert records[0]["prompt"] == requests[0][0].prompt and records[0]["response"] == "Answer: 5"
    assert (items, requests, responses) == frozen                      # inputs untouched
    assert GSM8KTask().score_items(items, requests, responses) == records   # same inputs, same records
    # multiple choice: prediction = argmax of the four loglikelihoods, here (B)
    gpqa = [{"id": "0", "gold": 1, "answer": "B", "domain": "Physics"}]
    reqs = [[LoglikelihoodRequest("ctx", f" ({x})") for x in "ABCD"]]
    [rec] = GPQADiamondTask().score_items(gpqa, reqs, [[(-3.0, False), (-1.0, True), (-2.0, False), (-4.0, False)]])
    assert (rec["answer"], rec["metrics"], rec["category"], rec["prompt"]) == ("B", {"accuracy": 1.0}, "Physics", "ctx")
