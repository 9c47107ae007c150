"""The task side of evaluation: settings, the request types a task asks the model, and the Task base.

A task never calls the model: `requests` says what to ask (loglikelihoods, rolling loglikelihoods,
generations) and `score_items` turns the answers into per-item records; the runner does the asking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from polm.errors import PolmError
from polm.eval.stats import summarize
from polm.registry import Registry

TASKS = Registry("eval task")    # filled by the task modules' decorators; looked up by polm.eval.registry
Mode = Literal["zero-shot", "few-shot", "cot", "self-consistency"]
MODES: tuple[str, ...] = ("zero-shot", "few-shot", "cot", "self-consistency")


@dataclass
class EvalSettings:
    """How items are prompted and decoded (shared by every task of one `evaluate` call)."""

    mode: Mode = "zero-shot"
    num_fewshot: int = 3           # k exemplars in few-shot mode
    samples: int = 5               # n samples for self-consistency (and pass@n for code)
    temperature: float = 0.7       # sampling temperature when more than one sample is drawn
    seed: int = 1234               # exemplar choice and sampling; distinct from training seeds
    max_new_tokens: int | None = None   # None: the task's own default


# --- requests: what a task asks the model, and what comes back ---------------------------------

@dataclass(frozen=True)
class LoglikelihoodRequest:
    """log p(continuation | context) → (Σ_t log p(cont_t | context, cont_<t), is_greedy)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class RollingLoglikelihoodRequest:
    """log p(text) token by token from BOS → (Σ_t log p(token_t | tokens_<t), number of tokens)."""

    text: str


@dataclass(frozen=True)
class GenerateRequest:
    """`n` completions of an already formatted prompt, each cut at the first stop string → list[str]."""

    prompt: str
    max_new_tokens: int
    temperature: float = 0.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int = 0


Request = LoglikelihoodRequest | RollingLoglikelihoodRequest | GenerateRequest


@dataclass(frozen=True)
class PromptFormat:
    """How the model reads prompts: chat template or plain text, and the exact text a prompt becomes."""

    chat: bool
    format_prompt: Callable[[Any], str]


# --- the task base -----------------------------------------------------------------------------

class Task:
    """Base class: subclasses load items, say what to ask the model and how to score the answers.

    Each item is a dict with at least "id". `requests(items, settings, fmt)` gives one list of
    requests per item; `score_items(items, requests, responses)` (responses aligned with requests)
    returns one record per item holding `metrics`, a dict of per-item metric values; `aggregate`
    turns the records into {metric: {value, ci_low, ci_high, n}}.
    """

    kind: ClassVar[str] = "generate"            # shown in reports: generate | choice | perplexity | code
    primary_metric: ClassVar[str] = "accuracy"
    paired_metric: ClassVar[str | None] = None  # per-item metric paired comparisons use; None: primary
    higher_is_better: ClassVar[bool] = True
    modes: ClassVar[tuple[str, ...]] = MODES
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 256
    name: str = "task"

    def load_items(self, limit: int | None = None) -> list[dict]:
        raise NotImplementedError

    def exemplar_pool(self, eval_items: list[dict]) -> list[dict]:
        """Few-shot candidates; by default the task's items outside the evaluated subset."""
        taken = {item["id"] for item in eval_items}
        pool = [item for item in self.load_items(None) if item["id"] not in taken]
        if not pool:
            raise PolmError(f"task '{self.name}' has no items left for few-shot exemplars: all "
                            f"{len(taken)} are being evaluated and exemplars never come from test items",
                            fix="Pass --limit below the task size, or use another mode.")
        return pool

    def question(self, item: dict) -> str:
        """The user turn for this item (instruction included)."""
        raise NotImplementedError

    def target(self, item: dict) -> str:
        """The reference response shown after an exemplar's question in few-shot prompts."""
        raise NotImplementedError

    def extract(self, response: str) -> str | None:
        """The answer a response commits to (for self-consistency votes and the records)."""
        return None

    def score(self, response: str, item: dict) -> float:
        raise NotImplementedError

    def metrics(self, response: str, item: dict) -> dict[str, float]:
        """Per-item metric values of one response (the primary metric first)."""
        return {self.primary_metric: self.score(response, item)}

    def category(self, item: dict) -> str | None:
        """Per-category breakdown key in reports (subdomain, generator name...)."""
        return None

    def requests(self, items: list[dict], settings: EvalSettings, fmt: PromptFormat) -> list[list[Request]]:
        """What to ask the model: one list of requests per item."""
        raise NotImplementedError

    def score_items(self, items: list[dict], requests: list[list[Request]],
                    responses: list[list[Any]]) -> list[dict]:
        """One record per item from its requests and their responses; a pure function of its arguments."""
        raise NotImplementedError

    def aggregate(self, records: list[dict], *, seed: int = 0) -> dict[str, dict[str, float]]:
        names = list(records[0]["metrics"]) if records else [self.primary_metric]
        return {m: summarize([r["metrics"][m] for r in records], seed=seed) for m in names}

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise PolmError(f"task '{self.name}' does not support mode '{mode}'",
                            fix=f"Its modes are: {', '.join(self.modes)}.")
