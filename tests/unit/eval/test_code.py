"""HumanEval: program assembly, code extraction from chat replies, pass@k from sandboxed runs."""

from __future__ import annotations

import pytest

from polm.eval.code import HumanEvalTask, build_program, extract_code
from polm.eval.runner import evaluate_task
from polm.eval.task import EvalSettings
from polm.sandbox import run_python


@pytest.fixture(scope="module")
def problems():
    return HumanEvalTask().load_items()


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    assert len(problems) == 164
    for item in problems[:3]:
        assert run_python(build_program(item, item["canonical_solution"], chat=False)).passed
        assert not run_python(build_program(item, "    return None\n", chat=False)).passed


def test_chat_replies_are_extracted(problems):
    item = problems[2]   # truncate_number
    full = f"Here it is:\n```python\n{item['prompt']}{item['canonical_solution']}```\nHope it helps."
    assert extract_code(full) == item["prompt"] + item["canonical_solution"]
    assert run_python(build_program(item, full, chat=True)).passed
    cut_off = "```python\ndef truncate_number(number: float) -> float:\n    return number % 1.0\n"
    assert run_python(build_program(item, cut_off, chat=True)).passed      # reply ended mid-block
    assert extract_code("no fence") == "no fence"


class ScriptedCoder:
    chat = False

    def __init__(self, completions):
        self.completions = completions

    def format_prompt(self, prompt):
        return prompt

    def generate(self, prompts, *, n, temperature, **kwargs):
        assert n == len(self.completions) and temperature == (0.7 if n > 1 else 0.0)
        return [list(self.completions) for _ in prompts]


def test_pass_at_k_from_ten_samples(problems):
    item = problems[2]
    samples = [item["canonical_solution"]] * 3 + ["    return number\n"] * 7
    [record] = evaluate_task(HumanEvalTask(), ScriptedCoder(samples), [item],
                             EvalSettings(mode="self-consistency", samples=10))
    assert record["status"].count("passed") == 3
    # n = 10, c = 3: pass@1 = 3/10; pass@5 = 1 - C(7,5)/C(10,5) = 1 - 21/252; pass@10 = 1
    assert record["metrics"] == pytest.approx({"pass@1": 0.3, "pass@5": 1 - 21 / 252, "pass@10": 1.0})


def test_fewshot_exemplars_are_other_problems(problems):
    task = HumanEvalTask()
    seen = {}

    class Capture(ScriptedCoder):
        def generate(self, prompts, **kwargs):
            seen["prompts"] = prompts
            return [[""] for _ in prompts]

    items = problems[:4]
    evaluate_task(task, Capture([""]), items, EvalSettings(mode="few-shot", num_fewshot=2))
    for item, prompt in zip(items, seen["prompts"]):
        assert prompt.endswith(item["prompt"])
        shots = prompt[:-len(item["prompt"])]
        assert shots.count("def ") >= 2 and not any(other["prompt"] in shots for other in items)


def test_the_task_runs_tests_apart_from_the_program_and_early_exits_fail(problems):
    """Scoring passes the tests to the sandbox separately: canonical solutions pass, and a completion
    that exits (status 0) before the tests run scores 0, as in the official HumanEval harness."""
    for item in problems[:6]:
        [record] = evaluate_task(HumanEvalTask(), ScriptedCoder([item["canonical_solution"]]), [item], EvalSettings())
        assert record["status"] == ["passed"], item["id"]
    item = problems[2]
    exits = ["    return None\nimport sys\nsys.exit(0)\n", "    return None\nimport os\nos._exit(0)\n",
             "    raise SystemExit(0)\n"]
    [record] = evaluate_task(HumanEvalTask(), ScriptedCoder([item["canonical_solution"], *exits]), [item],
                                        EvalSettings(mode="self-consistency", samples=4))
    assert record["status"] == ["passed", "failed", "failed", "failed"]
    assert record["metrics"]["pass@1"] == pytest.approx(0.25)
