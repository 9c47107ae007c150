"""Embedded data behind `builtin:` references: GSM8K test, reasoning-gym tasks, Wikipedia summaries.

`load_builtin("builtin:reasoning-gym/chain_sum?n=100&seed=0")` returns plain dict records (arithmetic
tasks get step-by-step worked solutions); polm.verify scores a model's answer to them.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import MISSING, fields
from decimal import Decimal, localcontext
from typing import Any
from urllib.parse import unquote

from polm.assets import asset_file
from polm.data.wiki_facts import build_facts, select_facts
from polm.errors import PolmError, did_you_mean
from polm.verify import task_config_class, task_dataset

SOURCES = ("gsm8k-test", "reasoning-gym/<task>", "wiki-summaries", "wiki-facts")
SUBSET_KEYS = ("n", "seed", "offset")
RG_DEFAULT_N = 100
RG_STREAM = 2**24  # entries available per seed


# --- references --------------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """A query value as int, finite float or bool when it looks like one, else the string itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if math.isfinite(value):  # 'inf' and 'nan' stay words
            return value
    return text


def parse_query(query: str, where: str) -> dict[str, Any]:
    """'n=100&seed=0&max_digits=2' -> {'n': 100, 'seed': 0, 'max_digits': 2}.

    Percent-escapes are decoded but '+' is kept literally, so `operators=+,-` means plus and minus.
    """
    out: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise PolmError(f"query item '{part}' is not key=value", where=where,
                            fix="Write e.g. builtin:gsm8k-test?n=100&seed=0.")
        out[unquote(key)] = parse_value(unquote(value))
    return out


def _split_ref(ref: str) -> tuple[str, dict[str, Any]]:
    if not ref.startswith("builtin:"):
        raise PolmError(f"'{ref}' is not a builtin reference", fix="Write builtin:NAME, e.g. builtin:gsm8k-test.")
    body, _, query = ref[len("builtin:"):].partition("?")
    return body, parse_query(query, where=ref)


def load_builtin(ref: str) -> list[dict[str, Any]]:
    """Records of an embedded source.

    `builtin:gsm8k-test`, `builtin:wiki-summaries` (all records in file order, or with `?n=&seed=&offset=`
    a seeded random subset), `builtin:reasoning-gym/<task>?n=100&seed=0&<generator options>`,
    `builtin:wiki-facts?split=test&type=year` (polm.data.wiki_facts).
    """
    source, query = _split_ref(ref)
    if source.startswith("reasoning-gym/"):
        return reasoning_gym_records(source.partition("/")[2], query, where=ref)
    if source == "wiki-facts":
        records, subset = select_facts(_wiki_facts(), query, where=ref)
        return seeded_subset(records, **subset)
    readers: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "gsm8k-test": gsm8k_records, "wiki-summaries": wiki_records}
    if source not in readers:
        raise PolmError(f"unknown builtin source '{source}'", where=ref,
                        fix=did_you_mean(source, SOURCES) + " Valid: " + ", ".join(SOURCES) + ".")
    unknown = sorted(set(query) - set(SUBSET_KEYS))
    if unknown:
        raise PolmError(f"unknown query key '{unknown[0]}' for builtin:{source}", where=ref,
                        fix=f"Valid keys: {', '.join(SUBSET_KEYS)}.")
    return seeded_subset(readers[source](), **query)


def seeded_subset(records: list[dict[str, Any]], n: int | None = None, seed: int | None = None,
                  offset: int = 0) -> list[dict[str, Any]]:
    """All records in order, or slice [offset, offset+n) of a permutation seeded by `seed` (default 0).

    One seed gives one permutation, so subsets at different offsets never share a record.
    """
    _check_counts(n=n, seed=seed, offset=offset)
    if n is None and seed is None and offset == 0:
        return records
    order = list(range(len(records)))
    random.Random(seed or 0).shuffle(order)
    stop = len(order) if n is None else offset + n
    return [records[i] for i in order[offset:stop]]


def _check_counts(where: str | None = None, **values: Any) -> None:
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise PolmError(f"query key '{name}' must be a non-negative integer, got {value!r}", where=where,
                            fix=f"Write e.g. {name}=100.")


# --- GSM8K and Wikipedia -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _gsm8k_lines() -> tuple[str, ...]:
    return tuple(asset_file("gsm8k-test").read_text(encoding="utf-8").splitlines())


def gsm8k_records() -> list[dict[str, Any]]:
    """The 1,319 GSM8K test problems; `answer` is the number after '####' with commas removed."""
    records = []
    for i, line in enumerate(filter(None, _gsm8k_lines())):
        item = json.loads(line)
        final = item["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
        records.append({"prompt": item["question"], "completion": item["answer"], "answer": final,
                        "source": "gsm8k-test", "id": i})
    return records


@functools.lru_cache(maxsize=1)
def _wiki_items() -> tuple[tuple[str, str], ...]:
    data = json.loads(asset_file("wiki-summaries").read_text(encoding="utf-8"))
    return tuple((item["title"], item["extract"]) for item in data.values())


def wiki_records() -> list[dict[str, Any]]:
    """The 10,033 English Wikipedia summaries as `{"text": extract, "title": title}`."""
    return [{"text": extract, "title": title} for title, extract in _wiki_items()]


@functools.lru_cache(maxsize=1)
def _wiki_facts() -> tuple[dict[str, Any], ...]:
    """builtin:wiki-facts before filtering: every rule-built question of the summaries (polm.data.wiki_facts)."""
    return tuple(build_facts(list(_wiki_items())))


# --- reasoning-gym -----------------------------------------------------------------------------------

def reasoning_gym_records(task: str, query: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """`n` entries of a reasoning-gym task: indices offset..offset+n-1 of its generator seeded with
    `generator_seed(seed)`.

    Each record keeps the generator `config` and its index `id`, so the scorer can rebuild the exact
    entry (some verifiers compare tuples that a JSON round trip turns into lists).
    """
    query = dict(query)
    n, seed, offset = query.pop("n", RG_DEFAULT_N), query.pop("seed", 0), query.pop("offset", 0)
    _check_counts(where, n=n, seed=seed, offset=offset)
    if offset + n > RG_STREAM:
        raise PolmError(f"offset + n = {offset + n} exceeds {RG_STREAM} entries per seed", where=where,
                        fix="Use another seed for more entries.")
    config = {**_generator_options(task, query, where), "seed": generator_seed(seed), "size": offset + n}
    dataset = _checked_dataset(task, json.dumps(config, sort_keys=True), where)
    left_to_right = task == "basic_arithmetic" and not dataset.config.allow_parentheses
    records = []
    for idx in range(offset, offset + n):
        entry = dataset[idx]
        answer = None if entry["answer"] is None else str(entry["answer"])
        records.append({"prompt": entry["question"], "completion": _completion(entry, answer, dataset, left_to_right),
                        "answer": answer, "task": task, "entry": to_jsonable(entry),
                        "source": f"reasoning-gym/{task}", "id": idx, "config": config})
    return records


def generator_seed(seed: int) -> int:
    """The reasoning-gym seed behind polm's `seed`.

    reasoning-gym draws entry i from Random(seed + i), so seed=0&n=2000 would contain every entry of
    seed=1234&n=200. polm spreads seeds with a hash over [0, 2**32 - RG_STREAM), making the entry
    streams of different seeds disjoint (overlap chance ~ n / 2**31) and keeping seed + i < 2**32,
    which the numpy-seeded tasks require.
    """
    digest = hashlib.sha256(f"polm/reasoning-gym/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**32 - RG_STREAM)


def _generator_options(task: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    """Check generator options against the task's config dataclass; list-typed fields split on commas."""
    valid = {f.name: f for f in fields(task_config_class(task, where)) if f.name not in ("seed", "size")}
    out = {}
    for key, value in options.items():
        if key not in valid:
            hint = "use n= for the number of records" if key == "size" else did_you_mean(key, valid)
            raise PolmError(f"reasoning-gym task '{task}' has no option '{key}'", where=where,
                            fix=f"{hint} Valid options: {', '.join(sorted(valid))} (plus n, seed, offset).")
        default = valid[key].default if valid[key].default is not MISSING else None
        is_list = isinstance(default, (list, tuple)) or "list" in str(valid[key].type).lower()
        out[key] = [parse_value(v) for v in str(value).split(",")] if is_list else value
    return out


def _checked_dataset(task: str, config_json: str, where: str):
    try:
        return task_dataset(task, config_json)
    except (AssertionError, ValueError, TypeError) as err:
        raise PolmError(f"reasoning-gym rejected the options of '{task}' ({err or type(err).__name__})",
                        where=where, fix="Check the option values against the task's config class.") from None


def to_jsonable(value: Any) -> Any:
    """Tuples and sets become lists, dict keys strings; other non-JSON leaves become strings."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _completion(entry: dict[str, Any], answer: str | None, dataset: Any, left_to_right: bool) -> str | None:
    """Worked steps + 'Answer: X' when the entry has an arithmetic expression whose steps reproduce the
    answer under the task's own scorer; 'Answer: X' otherwise; None for tasks without a single answer."""
    if answer is None:
        return None
    expression = entry.get("metadata", {}).get("expression")
    if isinstance(expression, str):
        try:
            steps, value = worked_solution(expression, left_to_right=left_to_right)
        except (SyntaxError, ValueError, ArithmeticError):  # ArithmeticError: division by zero
            steps, value = [], None
        if steps and dataset.score_answer(format_number(value), entry) == 1.0:
            return "\n".join([*steps, f"Answer: {answer}"])
    return f"Answer: {answer}"


# --- worked solutions for arithmetic expressions -----------------------------------------------------

Number = int | Decimal
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def format_number(value: Number) -> str:
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def apply_op(symbol: str, a: Number, b: Number) -> Number:
    """a op b. Integer '/' is floor division, as reasoning-gym's basic_arithmetic computes its answers
    (it evaluates with '/' replaced by '//'); decimals divide exactly."""
    if symbol == "+":
        return a + b
    if symbol == "-":
        return a - b
    if symbol == "*":
        return a * b
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    return Decimal(a) / Decimal(b)


def _step(symbol: str, a: Number, b: Number) -> tuple[str, Number]:
    value = apply_op(symbol, a, b)
    line = f"{format_number(a)} {symbol} {format_number(b)} = {format_number(value)}"
    if symbol == "/" and isinstance(value, int) and a % b:
        line += " (rounded down)"
    return line, value


def worked_solution(expression: str, *, left_to_right: bool = False) -> tuple[list[str], Number]:
    """Evaluate `expression` one operation per line: (["57 + 87 = 144", "144 + 70 = 214"], 214).

    Operator precedence and parentheses follow Python's grammar (`*` `/` before `+` `-`, unary minus
    binds tightest, so `2 - -1` is 2 minus negative one). `left_to_right=True` instead applies the
    operators in reading order, as basic_arithmetic does when `allow_parentheses=False`.
    Raises SyntaxError/ValueError for anything but numbers, + - * / and parentheses.
    """
    with localcontext() as ctx:
        ctx.prec = 100  # decimal sums must stay exact
        if left_to_right:
            return _left_to_right(expression)
        steps: list[str] = []
        tree = ast.parse(expression.strip(), mode="eval")
        return steps, _evaluate(tree.body, expression.strip(), steps)


def _evaluate(node: ast.AST, text: str, steps: list[str]) -> Number:
    """Post-order walk: operands first (left, then right), then one step line for this operation."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _number(ast.get_source_segment(text, node) or "")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign = -1 if isinstance(node.op, ast.USub) else 1
        if isinstance(node.operand, ast.Constant):
            return sign * _evaluate(node.operand, text, steps)  # a signed literal such as -7
        inner = _evaluate(node.operand, text, steps)
        steps.append(f"{'-' if sign < 0 else '+'}({format_number(inner)}) = {format_number(sign * inner)}")
        return sign * inner
    if isinstance(node, ast.BinOp) and type(node.op) in _SYMBOL:
        a = _evaluate(node.left, text, steps)
        b = _evaluate(node.right, text, steps)
        line, value = _step(_SYMBOL[type(node.op)], a, b)
        steps.append(line)
        return value
    raise ValueError(f"not a plain arithmetic expression: {text!r}")


def _number(literal: str) -> Number:
    # From the source text, not the parsed float, so that 4.4439 stays exactly 4.4439.
    return Decimal(literal) if any(c in literal for c in ".eE") else int(literal)


_TOKEN = re.compile(r"\s*(\d+(?:\.\d+)?|[-+*/])")


def _left_to_right(expression: str) -> tuple[list[str], Number]:
    tokens = _TOKEN.findall(expression)
    if "".join(tokens) != re.sub(r"\s+", "", expression) or len(tokens) % 2 == 0:
        raise ValueError(f"not a flat chain of numbers and operators: {expression!r}")
    value, steps = _number(tokens[0]), []
    for symbol, literal in zip(tokens[1::2], tokens[2::2]):
        line, value = _step(symbol, value, _number(literal))
        steps.append(line)
    return steps, value
