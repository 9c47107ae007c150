"""Verifiable text rewards: final-answer match, reasoning-gym scorers, answer format, length."""

from __future__ import annotations

import re

from polm.rewards.base import reward
from polm.verify import score_response


@reward("math_answer", requires=("answer",))
def math_answer(completions: list[str], records: list[dict]) -> list[float]:
    """1.0 when the response's final answer ('Answer: X', \\boxed{X}, '#### X' or the last number)
    equals record['answer'] numerically (GSM8K style: commas and '$' ignored, 3.0 == 3), else 0."""
    return [score_response(c, {"answer": r["answer"]}) for c, r in zip(completions, records)]


@reward("reasoning_gym", requires=("task", "entry"))
def reasoning_gym(completions: list[str], records: list[dict]) -> list[float]:
    """The reasoning-gym task's own `score_answer` on the extracted final answer, in [0, 1]
    (records from `builtin:reasoning-gym/<task>` carry the task, its config and the entry)."""
    return [score_response(c, r) for c, r in zip(completions, records)]


@reward("format")
def answer_format(completions: list[str], records: list[dict], pattern: str = r"(?im)^\s*answer\s*:\s*\S") -> list[float]:
    """1.0 when the response matches `pattern` (default: a line 'Answer: X'; for tags use e.g.
    '(?s)<think>.*</think>\\s*<answer>.*</answer>'), else 0."""
    compiled = re.compile(pattern)
    return [1.0 if compiled.search(c) else 0.0 for c in completions]


@reward("length")
def length_penalty(completions: list[str], records: list[dict], max_chars: int = 400,
                   soft_chars: int = 100) -> list[float]:
    """0 up to max_chars - soft_chars, then falling linearly to -1 at max_chars and below
    (DAPO's soft overlong punishment, in characters)."""
    start = max_chars - soft_chars
    return [-min(1.0, max(0, len(c) - start) / max(soft_chars, 1)) for c in completions]

