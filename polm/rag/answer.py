"""Questions with retrieved passages into prompts, and answers back into text plus the cited passages.

The same prompt serves `polm rag ask`, `polm rag eval` and the RAFT training data, so a model trained
on RAFT records reads at test time exactly the layout it was trained on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from polm.eval.user_tasks import short_answer

RAG_INSTRUCTION = ("Answer the question using the passages. Cite the passages you use by number, like [1]. "
                   "End with a line 'Answer: <short answer> [n]'.")
CLOSED_BOOK_INSTRUCTION = "Answer the question. End with a line 'Answer: <short answer>'."
_CITATION = re.compile(r"\[(\d+)\]")


def rag_prompt(question: str, passages: Sequence[tuple[str, str]], instruction: str = RAG_INSTRUCTION) -> str:
    """The user turn: instruction, passages numbered from 1 as '[i] (title) text', then the question."""
    shown = "\n".join(f"[{i}] ({title}) {text}" if title else f"[{i}] {text}"
                      for i, (title, text) in enumerate(passages, start=1))
    return f"{instruction}\n\n{shown}\n\nQuestion: {question}"


def closed_book_prompt(question: str) -> str:
    return f"{CLOSED_BOOK_INSTRUCTION}\n\nQuestion: {question}"


def parse_citations(response: str) -> list[int]:
    """Passage numbers cited as [n] anywhere in the response, each once, in order of first mention."""
    return list(dict.fromkeys(int(n) for n in _CITATION.findall(response)))


def answer_text(response: str) -> str:
    """The short answer: after the last 'Answer:' (else the first line), citations and quote markers removed."""
    return " ".join(_CITATION.sub(" ", short_answer(response)).split())
