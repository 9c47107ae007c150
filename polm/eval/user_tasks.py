"""User tasks without code: a JSONL of questions and answers, scored by exact match and token F1,
described either inline (`qa?data=q.jsonl&metric=f1`) or by a small YAML file:

    # my_task.yaml — run with: polm eval --model M --task my_task.yaml
    data: capitals.jsonl          # relative to this file; one {"question": ..., "answer": ...} per line
    prompt: "What is the capital of {question}? Reply with the city only."
    metric: exact_match           # or f1 (both are always reported)
    fewshot: capitals_dev.jsonl   # optional exemplar pool (else: items outside the evaluated subset)

`answer` may be a string or a list of accepted strings. User tasks with code are a `Task` subclass
(or a function returning one) named as `package.module:attribute`; tasks answered by generation
subclass `polm.eval.prompting.GenerationTask`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from polm.errors import PolmError
from polm.eval.prompting import GenerationTask
from polm.eval.task import TASKS, Task
from polm.verify import normalize_text, token_f1


@dataclass
class QATaskFile:
    data: str = ""
    prompt: str = "{question}"
    metric: Literal["exact_match", "f1"] = "exact_match"
    fewshot: str | None = None
    question_field: str = "question"
    answer_field: str = "answer"


def load_task_yaml(path: Path, overrides: dict[str, Any] | None = None) -> Task:
    """A YAML task file → a QA task; keys and types are checked with file:line in errors."""
    from polm.config import load_config

    cfg = load_config(QATaskFile, path, [f"{k}={v}" for k, v in (overrides or {}).items()])
    if not cfg.data:
        raise PolmError("the task file names no data", where=str(path),
                        fix="Add a line `data: questions.jsonl` (a JSONL of question/answer records).")
    return qa(data=cfg.data, prompt=cfg.prompt, metric=cfg.metric, fewshot=cfg.fewshot,
              question_field=cfg.question_field, answer_field=cfg.answer_field, base_dir=path.parent)


def read_qa_jsonl(path: str, question_field: str, answer_field: str) -> list[dict]:
    """Records {id, question, answers: [str], fields: the raw record}; errors name file:line."""
    file = Path(path)
    if not file.is_file():
        raise PolmError(f"question file '{path}' does not exist", fix="Check the path given as data=.")
    items = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise PolmError(f"line is not valid JSON ({err.msg})", where=where,
                            fix="Write one JSON object per line.") from None
        items.append(_qa_item(rec, where, question_field, answer_field, len(items)))
    if not items:
        raise PolmError(f"question file '{path}' holds no records", fix="Add one JSON object per line.")
    return items


def _qa_item(rec: Any, where: str, question_field: str, answer_field: str, index: int) -> dict:
    if not isinstance(rec, dict):
        raise PolmError(f"expected a JSON object, got {type(rec).__name__}", where=where)
    for key in (question_field, answer_field):
        if key not in rec:
            raise PolmError(f"record has no field '{key}' (fields: {', '.join(rec) or 'none'})", where=where,
                            fix="Rename the field, or set question_field= / answer_field= for this task.")
    answers = rec[answer_field] if isinstance(rec[answer_field], list) else [rec[answer_field]]
    if not answers or not all(isinstance(a, (str, int, float)) for a in answers):
        raise PolmError(f"field '{answer_field}' must be a string or a list of strings", where=where)
    return {"id": str(rec.get("id", index)), "question": str(rec[question_field]),
            "answers": [str(a) for a in answers], "answer": str(answers[0]), "fields": rec,
            "category": rec.get("category")}


def short_answer(response: str) -> str:
    """The answer part of a free-text response: after the last 'Answer:' if any, else the first line."""
    found = re.findall(r"answer\s*:\s*(.+)", response, flags=re.IGNORECASE)
    if found:
        return found[-1].strip()
    lines = [ln.strip() for ln in response.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


class QATask(GenerationTask):
    """Free-form QA on a user JSONL: exact match and token F1 against the best-matching reference."""

    def __init__(self, *, data: str, prompt: str = "{question}", metric: str = "exact_match",
                 fewshot: str | None = None, question_field: str = "question", answer_field: str = "answer"):
        if metric not in ("exact_match", "f1"):
            raise PolmError(f"qa metric must be exact_match or f1, got '{metric}'")
        self.data, self.template, self.fewshot = data, prompt, fewshot
        self.fields = (question_field, answer_field)
        self.primary_metric = metric
        self.max_new_tokens = 64

    def load_items(self, limit: int | None = None) -> list[dict]:
        return read_qa_jsonl(self.data, *self.fields)

    def exemplar_pool(self, eval_items: list[dict]) -> list[dict]:
        if self.fewshot:
            return [{**it, "id": f"fewshot-{it['id']}"} for it in read_qa_jsonl(self.fewshot, *self.fields)]
        return super().exemplar_pool(eval_items)

    def question(self, item: dict) -> str:
        try:
            return self.template.format(**{**item["fields"], "question": item["question"]})
        except (KeyError, IndexError) as err:
            raise PolmError(f"qa prompt template '{self.template}' uses {err}, which the record lacks",
                            fix="Use {question} or another field of the JSONL records in the prompt.") from None

    def target(self, item: dict) -> str:
        return item["answer"]

    def extract(self, response: str) -> str | None:
        return normalize_text(short_answer(response)) or None

    def score(self, response: str, item: dict) -> float:
        return self.metrics(response, item)[self.primary_metric]

    def metrics(self, response: str, item: dict) -> dict[str, float]:
        answer = short_answer(response)
        em = max(float(normalize_text(answer) == normalize_text(ref)) for ref in item["answers"])
        f1 = max(token_f1(answer, ref) for ref in item["answers"])
        both = {"exact_match": em, "f1": f1}
        return {self.primary_metric: both[self.primary_metric], **both}

    def category(self, item: dict) -> str | None:
        return item.get("category")


def _resolve(path: str, base: Path | None) -> str:
    return str(base / path) if base is not None and not Path(path).is_absolute() else path


@TASKS.register("qa")
def qa(*, data: str = "", prompt: str = "{question}", metric: str = "exact_match", fewshot: str | None = None,
       question_field: str = "question", answer_field: str = "answer", base_dir: Path | None = None) -> Task:
    """qa?data=questions.jsonl&metric=exact_match|f1 — a user question set."""
    if not data:
        raise PolmError("task 'qa' needs a data file", fix="Write qa?data=path/to/questions.jsonl.")
    return QATask(data=_resolve(data, base_dir), prompt=prompt, metric=metric,
                  fewshot=_resolve(fewshot, base_dir) if fewshot else None,
                  question_field=question_field, answer_field=answer_field)
