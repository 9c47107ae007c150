"""Text in, text out on top of any Generator: prompts as strings or chat messages -> n completions each.

For callers that hold prompts as text (`polm generate`/`chat`, eval, the preference-data builders);
RL recipes tokenize once themselves and call `Generator.generate` directly.
"""

from __future__ import annotations

from typing import Any

from polm.data.templating import Prompt, format_prompt
from polm.rollout.base import Generator, SamplingConfig


def generate_text(generator: Generator, tokenizer: Any, prompts: list[Prompt], sampling: SamplingConfig, *,
                  seed: int, chat: bool = True, progress: bool = False) -> list[list[str]]:
    """`sampling.n` completions per prompt, in prompt order: result[i][j] is sample j of prompts[i].

    Each prompt is formatted with the tokenizer's chat template when `chat` and it has one (else used as
    plain text), tokenized without added special tokens, and each completion is cut before its first
    stop string. `progress` shows a bar over the prompts on stderr."""
    from polm.train.metrics import ProgressBar

    if not prompts:
        return []
    texts = [format_prompt(tokenizer, p, chat) for p in prompts]
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    bar = ProgressBar(len(prompts), 0, progress, label="sample")
    try:
        completions = generator.generate(prompt_ids, sampling, seed,
                                         on_progress=lambda k: bar.advance_to(k, f"{k * sampling.n} completions"))
    finally:
        bar.close()
    out: list[list[str]] = [[] for _ in prompts]
    for c in completions:
        out[c.prompt_index].append(c.text)
    return out
