"""Run tasks on a model: per-task metrics with bootstrap 95% CIs, sample counts, per-item records.

    from polm.eval.runner import evaluate
    result = evaluate("smollm2-135m-instruct", ["gsm8k", "arith:chain_sum"], limit=50, out_dir=Path("runs/ev"))

The runner collects every task's requests, asks the model once per group of requests of one type
and one decoding setting (across all tasks), and hands each task its responses to score. Recipes
call `make_eval_fn(model, tokenizer, tasks, limit)` to evaluate every N steps during training.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

from polm.eval.model import ModelAdapter
from polm.eval.registry import get_task
from polm.eval.stats import paired_difference
from polm.eval.task import (
    EvalSettings,
    GenerateRequest,
    LoglikelihoodRequest,
    PromptFormat,
    Request,
    RollingLoglikelihoodRequest,
    Task,
)
from polm.io import atomic_write_json


def slug(name: str) -> str:
    """A file-name-safe form of a task spec or model reference."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "x"


def build_tasks(specs: list[str], settings: EvalSettings) -> list[Task]:
    """Resolve every spec and check its mode before any model runs, so a typo fails in a second."""
    tasks = [get_task(spec) for spec in specs]
    for task in tasks:
        task.check_mode(settings.mode)
    return tasks


def prepare(specs: list[str], settings: EvalSettings, limit: int | None) -> list[tuple[Task, list[dict]]]:
    """Tasks with their evaluated items (the first `limit`), all loaded before any model is."""
    return [(task, task.load_items(limit)[:limit]) for task in build_tasks(specs, settings)]


# --- answering requests ----------------------------------------------------------------------------

def _loglikelihood(model, group: list[LoglikelihoodRequest]) -> list[Any]:
    return model.loglikelihood([(r.context, r.continuation) for r in group])


def _rolling(model, group: list[RollingLoglikelihoodRequest]) -> list[Any]:
    return model.loglikelihood_rolling([r.text for r in group])


def _generate(model, group: list[GenerateRequest]) -> list[Any]:
    first = group[0]   # one group shares every setting but the prompt
    return model.generate([r.prompt for r in group], formatted=True, max_new_tokens=first.max_new_tokens,
                          temperature=first.temperature, n=first.n, seed=first.seed, stop=first.stop)


_ANSWER: dict[type, Callable[[Any, list[Any]], list[Any]]] = {
    LoglikelihoodRequest: _loglikelihood, RollingLoglikelihoodRequest: _rolling, GenerateRequest: _generate}


def _group_key(request: Request) -> tuple:
    """Requests answered by one model call: same type and, for generation, same decoding settings."""
    if isinstance(request, GenerateRequest):
        return (GenerateRequest, *astuple(request)[1:])
    return (type(request),)


def answer(model, requests: Sequence[Request]) -> tuple[list[Any], list[float]]:
    """Each request's response and its share of model time (a group's seconds split evenly over its
    requests): one model call per group of `_group_key`, requests in their given order within a group."""
    groups: dict[tuple, list[int]] = {}
    for i, request in enumerate(requests):
        groups.setdefault(_group_key(request), []).append(i)
    responses: list[Any] = [None] * len(requests)
    seconds = [0.0] * len(requests)
    for key, idx in groups.items():
        start = time.perf_counter()
        out = _ANSWER[key[0]](model, [requests[i] for i in idx])
        share = (time.perf_counter() - start) / len(idx)
        for i, response in zip(idx, out):
            responses[i], seconds[i] = response, share
    return responses, seconds


@dataclass
class _Asked:
    """One task's requests (per item) and where they sit in the run's flat request list."""

    task: Task
    items: list[dict]
    requests: list[list[Request]]
    start: int

    @property
    def size(self) -> int:
        return sum(len(r) for r in self.requests)

    def split(self, flat: list[Any]) -> list[list[Any]]:
        """The slice of a flat list belonging to this task, regrouped per item."""
        out, at = [], self.start
        for reqs in self.requests:
            out.append(flat[at:at + len(reqs)])
            at += len(reqs)
        return out


def run_tasks(prepared: list[tuple[Task, list[dict]]], model, settings: EvalSettings) -> list[tuple[list[dict], float]]:
    """Every task's records and seconds: all requests of all tasks answered together (`answer`),
    then each task scores its own. Seconds = its share of model time + its scoring time."""
    fmt = PromptFormat(chat=model.chat, format_prompt=model.format_prompt)
    asked, flat = [], []
    for task, items in prepared:
        requests = task.requests(items, settings, fmt)
        asked.append(_Asked(task, items, requests, len(flat)))
        flat += [r for reqs in requests for r in reqs]
    responses, seconds = answer(model, flat)
    out = []
    for a in asked:
        start = time.perf_counter()
        records = a.task.score_items(a.items, a.requests, a.split(responses))
        model_seconds = sum(seconds[a.start:a.start + a.size])
        out.append((records, model_seconds + time.perf_counter() - start))
    return out


def evaluate_task(task: Task, model, items: list[dict], settings: EvalSettings) -> list[dict]:
    """One task's per-item records on `model` (requests, answers, scores)."""
    [(records, _)] = run_tasks([(task, items)], model, settings)
    return records


def task_entry(task: Task, model_name: str, settings: EvalSettings, records: list[dict],
               seconds: float) -> dict[str, Any]:
    """One task's entry: metrics (value, CI, n), categories, timing and records."""
    return {"task": task.name, "model": model_name, "kind": task.kind, "mode": settings.mode,
            "primary_metric": task.primary_metric, "higher_is_better": task.higher_is_better,
            "paired_metric": task.paired_metric or task.primary_metric, "n": len(records),
            "metrics": task.aggregate(records, seed=settings.seed),
            "categories": _categories(task, records, settings.seed),
            "seconds": round(seconds, 3), "samples_per_s": round(len(records) / max(seconds, 1e-9), 3),
            "records": records}


def _categories(task: Task, records: list[dict], seed: int) -> dict[str, dict[str, float]]:
    """Primary metric per category (gpqa domain, reasoning-gym task...), when items carry one."""
    groups: dict[str, list[dict]] = {}
    for rec in records:
        if rec.get("category") is not None:
            groups.setdefault(str(rec["category"]), []).append(rec)
    return {cat: task.aggregate(recs, seed=seed)[task.primary_metric] for cat, recs in sorted(groups.items())}


def evaluate(model: str | ModelAdapter, tasks: list[str], *, limit: int | None = None,
             mode: str = "zero-shot", settings: EvalSettings | None = None, out_dir: Path | None = None,
             batch_size: int = 8, device: str = "auto", dtype: str = "auto", chat: str = "auto",
             prepared: list[tuple[Task, list[dict]]] | None = None) -> dict[str, Any]:
    """Evaluate one model on `tasks` (specs, see polm.eval.registry); returns
    {"model", "settings", "limit", "tasks": {spec: entry}} and, with `out_dir`, writes one JSON per
    task (with per-item records) to out_dir/<task>.json. `prepared` (from `prepare`) skips reloading
    the items when several models are evaluated on the same tasks."""
    settings = settings or EvalSettings(mode=mode)  # type: ignore[arg-type]
    prepared = prepared if prepared is not None else prepare(tasks, settings, limit)
    adapter = ModelAdapter.load(model, device=device, dtype=dtype, batch_size=batch_size,
                                chat=chat) if isinstance(model, str) else model  # type: ignore[arg-type]
    result: dict[str, Any] = {"model": adapter.name, "settings": asdict(settings), "limit": limit,
                              "chat": adapter.chat, "tasks": {}}
    for (task, _), (records, seconds) in zip(prepared, run_tasks(prepared, adapter, settings)):
        entry = task_entry(task, adapter.name, settings, records, seconds)
        if out_dir is not None:
            atomic_write_json(Path(out_dir) / f"{slug(task.name)}.json", entry)
        result["tasks"][task.name] = entry
    return result


def compare(a: dict[str, Any], b: dict[str, Any], *, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Paired difference B − A per task on the items both evaluated (matched by item id)."""
    out = {}
    for name, entry_a in a["tasks"].items():
        entry_b = b["tasks"].get(name)
        if entry_b is None:
            continue
        metric = entry_a["paired_metric"]
        by_id = {str(r["id"]): r["metrics"][metric] for r in entry_b["records"]}
        pairs = [(r["metrics"][metric], by_id[str(r["id"])]) for r in entry_a["records"] if str(r["id"]) in by_id]
        diff = paired_difference([p[0] for p in pairs], [p[1] for p in pairs], seed=seed)
        out[name] = {"metric": metric, "higher_is_better": entry_a["higher_is_better"] or metric != "nll_per_token",
                     "model_a": a["model"], "model_b": b["model"], **diff}
    return out


def without_records(result: dict[str, Any]) -> dict[str, Any]:
    """The summary of an `evaluate` result: everything but the per-item records."""
    tasks = {name: {k: v for k, v in entry.items() if k != "records"} for name, entry in result["tasks"].items()}
    return {**result, "tasks": tasks}


def make_eval_fn(model, tokenizer, tasks: list[str], limit: int | None = 50, *,
                 settings: EvalSettings | None = None, batch_size: int = 8) -> Callable[[], dict[str, float]]:
    """An in-training eval hook: each call evaluates the (training) model on `tasks` and returns flat
    metrics {"eval/<task>/<metric>": value} for metrics.jsonl. Tasks and items are built once; the
    model is put in eval mode for the call and restored after. Generation is greedy by default."""
    settings = settings or EvalSettings()
    prepared = prepare(tasks, settings, limit)
    adapter = ModelAdapter(model, tokenizer, batch_size=batch_size, name="training-model")

    def run() -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            out: dict[str, float] = {}
            for (task, _), (records, _) in zip(prepared, run_tasks(prepared, adapter, settings)):
                for metric, stats in task.aggregate(records, seed=settings.seed).items():
                    out[f"eval/{slug(task.name)}/{metric}"] = stats["value"]
            return out
        finally:
            model.train(was_training)

    return run
