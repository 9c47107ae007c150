"""Prompting modes for generation tasks: zero-shot, few-shot, zero-shot chain-of-thought and
self-consistency, in chat-template or plain formatting (chosen per model by the adapter), and
`GenerationTask`, the base of tasks that generate an answer and score it.

- few-shot: k exemplars drawn once with a fixed seed from a pool disjoint from the evaluated items
  (questions that also appear among the test items are dropped from the pool).
- cot: "Let's think step by step." (Kojima et al. 2022, "Large Language Models are Zero-Shot Reasoners").
- self-consistency: n sampled chain-of-thought answers, majority vote over the extracted answers
  (Wang et al. 2022, "Self-Consistency Improves Chain of Thought Reasoning").
"""

from __future__ import annotations

import random

from polm.errors import PolmError
from polm.eval.stats import majority_vote
from polm.eval.task import EvalSettings, GenerateRequest, PromptFormat, Task

COT_TRIGGER = "Let's think step by step."
PLAIN_STOPS = ("\n\nQ:", "\nQ:")   # a plain-text model that starts the next question has finished


def select_exemplars(task: Task, eval_items: list[dict], k: int, seed: int) -> list[dict]:
    """k exemplars from the task's pool, never one whose question is among the evaluated items."""
    if k <= 0:
        return []
    test_questions = {task.question(item) for item in eval_items}
    pool = [p for p in task.exemplar_pool(eval_items) if task.question(p) not in test_questions]
    if len(pool) < k:
        raise PolmError(f"task '{task.name}' has only {len(pool)} few-shot exemplars outside the "
                        f"evaluated items, {k} asked", fix="Lower --num-fewshot or --limit.")
    return random.Random(seed).sample(pool, k)


def build_prompt(task: Task, item: dict, exemplars: list[dict], mode: str, chat: bool) -> str | list[dict]:
    """The prompt for one item: a message list (chat models) or one string (plain models)."""
    question = task.question(item)
    cot = mode in ("cot", "self-consistency")
    if chat:
        messages: list[dict] = []
        for ex in exemplars:
            messages += [{"role": "user", "content": task.question(ex)},
                         {"role": "assistant", "content": task.target(ex)}]
        content = f"{question}\n{COT_TRIGGER}" if cot else question
        return [*messages, {"role": "user", "content": content}]
    shots = "".join(f"Q: {task.question(ex)}\nA: {task.target(ex)}\n\n" for ex in exemplars)
    return f"{shots}Q: {question}\nA:" + (f" {COT_TRIGGER}" if cot else "")


class GenerationTask(Task):
    """A task answered by generation: prompts from `question`/`target` in the settings' mode, one
    response per item scored by `metrics`; self-consistency scores the majority-vote response."""

    def requests(self, items: list[dict], settings: EvalSettings, fmt: PromptFormat) -> list[list[GenerateRequest]]:
        self.check_mode(settings.mode)
        k = settings.num_fewshot if settings.mode == "few-shot" else 0
        exemplars = select_exemplars(self, items, k, settings.seed)
        n = settings.samples if settings.mode == "self-consistency" else 1
        stop = self.stop + (() if fmt.chat else PLAIN_STOPS)
        return [[GenerateRequest(fmt.format_prompt(build_prompt(self, it, exemplars, settings.mode, fmt.chat)),
                                 max_new_tokens=settings.max_new_tokens or self.max_new_tokens,
                                 temperature=settings.temperature if n > 1 else 0.0, n=n, stop=stop,
                                 seed=settings.seed)]
                for it in items]

    def score_items(self, items: list[dict], requests: list[list[GenerateRequest]],
                    responses: list[list[list[str]]]) -> list[dict]:
        return [self._record(item, req, samples) for item, [req], [samples] in zip(items, requests, responses)]

    def _record(self, item: dict, request: GenerateRequest, samples: list[str]) -> dict:
        answers = [self.extract(s) for s in samples]
        vote = majority_vote(answers)
        response = samples[answers.index(vote)] if vote is not None else samples[0]
        record = {"id": item["id"], "prompt": request.prompt, "response": response, "answer": self.extract(response),
                  "target": item.get("answer"), "category": self.category(item),
                  "metrics": self.metrics(response, item)}
        if request.n > 1:
            record.update(samples=samples, votes=answers)
        return record
