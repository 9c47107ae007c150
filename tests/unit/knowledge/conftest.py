"""A tiny Llama whose answers vary with the prompt (wide init), and small hand-made fact sets."""

from __future__ import annotations

import pytest
from conftest import build_tiny_llama


def build_spread_llama(vocab_size: int, seed: int = 0):
    """The shared tiny Llama with initializer_range 0.5: greedy answers differ between prompts."""
    return build_tiny_llama(vocab_size, seed, initializer_range=0.5)


def fact(q, a, t="year", s="train", **extra):
    return {"question": q, "answer": a, "type": t, "split": s, **extra}


def year_facts(n: int, split: str = "train", start: int = 0) -> list[dict]:
    return [fact(f"When was item {i} built?", str(1950 + i), "year", split) for i in range(start, start + n)]


def pool_facts(n: int = 6) -> list[dict]:
    return [fact(f"When was thing {i} made?", str(1900 + i), "year", "dev") for i in range(n)]


@pytest.fixture()
def spread_llama(tiny_tokenizer):
    return build_spread_llama(len(tiny_tokenizer))
