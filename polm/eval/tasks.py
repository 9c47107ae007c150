"""Evaluation tasks: data + a prompt builder + a scorer, registered by name.

A task spec is `name`, `name?key=value&...` (task arguments), `arith:<reasoning-gym task>?...`, a
user plug-in `package.module:factory?...`, or a small YAML file describing a JSONL question set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from polm.errors import PolmError, closest, did_you_mean
from polm.registry import Registry, check_options

TASKS = Registry("eval task")
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


class Task:
    """Base class: subclasses load items and say how to prompt and score them.

    Each item is a dict with at least "id". `evaluate` returns one record per item holding the
    prompt, the response(s) and `metrics`, a dict of per-item metric values; `aggregate` turns the
    records into {metric: {value, ci_low, ci_high, n}}.
    """

    kind: ClassVar[str] = "generate"            # generate | choice | perplexity | code
    primary_metric: ClassVar[str] = "accuracy"
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

    def evaluate(self, model, items: list[dict], settings: EvalSettings) -> list[dict]:
        from polm.eval.prompting import evaluate_generation

        return evaluate_generation(self, model, items, settings)

    def aggregate(self, records: list[dict], *, seed: int = 0) -> dict[str, dict[str, float]]:
        from polm.eval.stats import summarize

        names = list(records[0]["metrics"]) if records else [self.primary_metric]
        return {m: summarize([r["metrics"][m] for r in records], seed=seed) for m in names}

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise PolmError(f"task '{self.name}' does not support mode '{mode}'",
                            fix=f"Its modes are: {', '.join(self.modes)}.")


# --- task specs -------------------------------------------------------------------------------

def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'name?a=1&b=x' → ('name', {'a': 1, 'b': 'x'}); values typed as in builtin: references."""
    from polm.data.builtin import parse_query

    base, _, query = spec.partition("?")
    return base, parse_query(query, where=f"task '{spec}'")


def get_task(spec: str) -> Task:
    """Build the task a spec names; unknown names suggest the closest registered one."""
    _register_builtins()
    base, args = split_spec(spec)
    if base.endswith((".yaml", ".yml")):
        from polm.eval.user_tasks import load_task_yaml

        return load_task_yaml(Path(base), overrides=args)
    family, sep, sub = base.partition(":")
    if sep and family in TASKS:        # e.g. arith:chain_sum
        task = _call_factory(TASKS.get(family), spec, args, sub)
    elif sep and _looks_like_typo(family):   # 'arth:chain_sum', not a plug-in module path
        raise PolmError(f"unknown eval task '{base}'", fix=did_you_mean(family, TASKS.names()))
    else:
        task = _call_factory(TASKS.get(base), spec, args)
    if not isinstance(task, Task):
        raise PolmError(f"'{base}' did not produce a polm eval task (got {type(task).__name__})",
                        fix="A task plug-in must be a polm.eval.tasks.Task subclass or a function returning one.")
    task.name = spec
    return task


def _looks_like_typo(family: str) -> bool:
    import importlib.util

    if "." in family or closest(family, TASKS.names()) is None:
        return False
    return importlib.util.find_spec(family) is None


def _call_factory(factory: Callable[..., Task], spec: str, args: dict[str, Any], *positional: str) -> Task:
    check_options(factory, args, where=spec.partition("?")[0], skip=len(positional), owner=f"task '{spec}'")
    try:
        return factory(*positional, **args)
    except TypeError as err:
        raise PolmError(f"task '{spec}': {err}", fix="Check the task's arguments.") from None


_BUILTINS_LOADED = False


def _register_builtins() -> None:
    """Import the built-in task modules once (they register themselves into TASKS)."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        import polm.eval.builtin_tasks  # noqa: F401
        import polm.eval.code  # noqa: F401
        import polm.eval.lmeval  # noqa: F401

        _BUILTINS_LOADED = True


def task_names() -> list[str]:
    _register_builtins()
    return TASKS.names()
