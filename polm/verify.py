"""Answer extraction and verifiers shared by eval and rewards, so that both read a response alike.

`extract_final_answer(text)` finds a response's final answer; `score_response(response, record)` scores
it against a record: reasoning-gym's own verifier for its tasks, a numeric match for GSM8K-style answers.
`normalize_text` / `token_f1` are SQuAD's short-answer matching (QA eval, RAG, knowledge probes).
"""

from __future__ import annotations

import functools
import json
import re
import string
from collections import Counter
from decimal import Decimal, InvalidOperation
from typing import Any

from polm.assets import get_asset, require_installed
from polm.errors import PolmError, did_you_mean

# --- final answers -----------------------------------------------------------------------------------

_ANSWER_LINE = re.compile(r"answer\s*:\s*(.+)", re.IGNORECASE)
_ANSWER_MARK = re.compile(r"answer\s*:", re.IGNORECASE)
_HASHES = re.compile(r"####\s*(.+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def extract_final_answer(text: str, multiline: bool = False) -> str | None:
    """The final answer in a model response, or None.

    Preference: the last 'Answer: X' line, else the last \\boxed{X}, else the last '#### X', else the
    last number in the text. Markdown bold, '$' and a trailing period around X are dropped, and a
    number written with thousands separators loses its commas ('1,234' -> '1234').
    `multiline=True` (answers such as grids) takes everything after the last 'Answer:' instead of one line.
    """
    marks = list(_ANSWER_MARK.finditer(text))
    if multiline and marks:
        return text[marks[-1].end():].strip() or None
    for finder in (_last_answer_line, _last_boxed, _last_hashes):
        found = finder(text)
        if found:
            return _clean(found)
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _last_answer_line(text: str) -> str | None:
    matches = _ANSWER_LINE.findall(text)
    return matches[-1] if matches else None


def _last_hashes(text: str) -> str | None:
    matches = _HASHES.findall(text)
    return matches[-1] if matches else None


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def _clean(answer: str) -> str:
    answer = answer.strip().strip("*").strip()
    if len(answer) > 1 and answer.startswith("$") and answer.endswith("$"):
        answer = answer[1:-1].strip()
    if answer.endswith(".") and _NUMBER.fullmatch(answer[:-1].lstrip("$")):
        answer = answer[:-1]
    return answer.replace(",", "") if _THOUSANDS.fullmatch(answer) else answer


# --- scoring -------------------------------------------------------------------------------------------

def score_response(response: str, record: dict[str, Any]) -> float:
    """Reward in [0, 1] for a model response to a builtin record.

    reasoning-gym records: the task's own `score_answer(extracted, entry)`. Other records (GSM8K):
    1.0 when the extracted number equals `record['answer']` numerically (commas, '$' ignored; 3.0 == 3).
    """
    answer = record.get("answer")
    extracted = extract_final_answer(response, multiline=isinstance(answer, str) and "\n" in answer)
    if "task" in record and "entry" in record:
        dataset, entry = _scoring_entry(record)
        return float(dataset.score_answer(extracted, entry))
    return 1.0 if extracted is not None and _same_number(extracted, str(record["answer"])) else 0.0


def _scoring_entry(record: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The task's generator and the entry to score against: rebuilt exactly from the record's config
    and index when it carries them (polm's records do), else the stored entry with default options."""
    task, config = record["task"], record.get("config")
    task_config_class(task, where=f"record of task '{task}'")  # unknown task: did-you-mean
    if isinstance(config, dict) and isinstance(record.get("id"), int):
        key = json.dumps(config, sort_keys=True)
        return task_dataset(task, key), _rebuilt_entry(task, key, record["id"])
    return task_dataset(task, json.dumps({"size": 1, "seed": 0})), record["entry"]


@functools.lru_cache(maxsize=8192)
def _rebuilt_entry(task: str, config_json: str, idx: int) -> dict[str, Any]:
    return task_dataset(task, config_json)[idx]


def _as_number(text: str) -> Decimal | None:
    """'1,234' / '$18' / '18.' -> Decimal; a sentence -> its last number ('The total is 18' -> 18)."""
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        numbers = _NUMBER.findall(cleaned)
        return Decimal(numbers[-1]) if numbers else None


def _same_number(a: str, b: str) -> bool:
    x, y = _as_number(a), _as_number(b)
    return x is not None and y is not None and x == y


# --- reasoning-gym tasks and their verifiers (the data builders draw their records from these too) ----

def _reasoning_gym():
    require_installed(get_asset("reasoning-gym"))
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    return reasoning_gym, DATASETS


def task_config_class(task: str, where: str) -> type:
    """The config dataclass of a reasoning-gym task; an unknown task is a PolmError naming the closest."""
    _, registry = _reasoning_gym()
    if task not in registry:
        raise PolmError(f"unknown reasoning-gym task '{task}'", where=where,
                        fix=did_you_mean(task, registry) + " All tasks: python -c 'import reasoning_gym.factory as f;"
                                                          " print(sorted(f.DATASETS))'.")
    return registry[task][1]


@functools.lru_cache(maxsize=32)
def task_dataset(task: str, config_json: str):
    """One generator per (task, options); cached because some load word lists or puzzles on creation."""
    reasoning_gym, _ = _reasoning_gym()
    return reasoning_gym.create_dataset(task, **json.loads(config_json))


# --- short answers (SQuAD) --------------------------------------------------------------------------

def normalize_text(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """F1 over normalised tokens: 2·P·R/(P+R) with P = overlap/|pred|, R = overlap/|ref|."""
    pred, ref = normalize_text(prediction).split(), normalize_text(reference).split()
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref:
        return float(pred == ref)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)
