"""Task specs to tasks: `name`, `name?key=value&...`, `arith:<reasoning-gym task>?...`, a user plug-in
`package.module:factory?...`, or a small YAML file describing a JSONL question set.

The built-in task modules are imported here (at the top, once), and register themselves into
`polm.eval.task.TASKS`; none of them imports this module, so there is no cycle.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polm.data.builtin import parse_query
from polm.errors import PolmError, closest, did_you_mean
from polm.eval import builtin_tasks, code, lmeval, user_tasks  # noqa: F401  (they register their tasks)
from polm.eval.task import TASKS, Task
from polm.eval.user_tasks import load_task_yaml
from polm.registry import check_options


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'name?a=1&b=x' → ('name', {'a': 1, 'b': 'x'}); values typed as in builtin: references."""
    base, _, query = spec.partition("?")
    return base, parse_query(query, where=f"task '{spec}'")


def get_task(spec: str) -> Task:
    """Build the task a spec names; unknown names suggest the closest registered one."""
    base, args = split_spec(spec)
    if base.endswith((".yaml", ".yml")):
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
                        fix="A task plug-in must be a polm.eval.task.Task subclass or a function returning one.")
    task.name = spec
    return task


def _looks_like_typo(family: str) -> bool:
    if "." in family or closest(family, TASKS.names()) is None:
        return False
    return importlib.util.find_spec(family) is None


def _call_factory(factory: Callable[..., Task], spec: str, args: dict[str, Any], *positional: str) -> Task:
    check_options(factory, args, where=spec.partition("?")[0], skip=len(positional), owner=f"task '{spec}'")
    try:
        return factory(*positional, **args)
    except TypeError as err:
        raise PolmError(f"task '{spec}': {err}", fix="Check the task's arguments.") from None


def task_names() -> list[str]:
    return TASKS.names()
