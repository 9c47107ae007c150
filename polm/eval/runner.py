"""Run tasks on a model: per-task metrics with bootstrap 95% CIs, sample counts, per-item records.

    from polm.eval.runner import evaluate
    result = evaluate("smollm2-135m-instruct", ["gsm8k", "arith:chain_sum"], limit=50, out_dir=Path("runs/ev"))

Recipes call `make_eval_fn(model, tokenizer, tasks, limit)` to evaluate every N steps during training.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from polm.eval.model import ModelAdapter
from polm.eval.tasks import EvalSettings, Task, get_task


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


def run_task(task: Task, model: ModelAdapter, settings: EvalSettings, limit: int | None,
             items: list[dict] | None = None) -> dict[str, Any]:
    """Evaluate one task; the entry holds metrics (value, CI, n), categories, timing and records."""
    items = items if items is not None else task.load_items(limit)[:limit]
    start = time.perf_counter()
    records = task.evaluate(model, items, settings)
    seconds = time.perf_counter() - start
    return {"task": task.name, "model": model.name, "kind": task.kind, "mode": settings.mode,
            "primary_metric": task.primary_metric, "higher_is_better": task.higher_is_better,
            "paired_metric": _paired_metric(task), "n": len(records),
            "metrics": task.aggregate(records, seed=settings.seed),
            "categories": _categories(task, records, settings.seed),
            "seconds": round(seconds, 3), "samples_per_s": round(len(records) / max(seconds, 1e-9), 3),
            "records": records}


def _paired_metric(task: Task) -> str:
    # Perplexity is a corpus ratio; pairs compare the per-document nll per token instead.
    return "nll_per_token" if task.kind == "perplexity" else task.primary_metric


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
    """Evaluate one model on `tasks` (specs, see polm.eval.tasks); returns
    {"model", "settings", "limit", "tasks": {spec: entry}} and, with `out_dir`, writes one JSON per
    task (with per-item records) to out_dir/<task>.json. `prepared` (from `prepare`) skips reloading
    the items when several models are evaluated on the same tasks."""
    settings = settings or EvalSettings(mode=mode)  # type: ignore[arg-type]
    prepared = prepared if prepared is not None else prepare(tasks, settings, limit)
    adapter = model if isinstance(model, ModelAdapter) else ModelAdapter.load(
        model, device=device, dtype=dtype, batch_size=batch_size, chat=chat)  # type: ignore[arg-type]
    result: dict[str, Any] = {"model": adapter.name, "settings": asdict(settings), "limit": limit,
                              "chat": adapter.chat, "tasks": {}}
    for task, items in prepared:
        entry = run_task(task, adapter, settings, limit, items)
        if out_dir is not None:
            from polm.io import atomic_write_json

            atomic_write_json(Path(out_dir) / f"{slug(task.name)}.json", entry)
        result["tasks"][task.name] = entry
    return result


def compare(a: dict[str, Any], b: dict[str, Any], *, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Paired difference B − A per task on the items both evaluated (matched by item id)."""
    from polm.eval.stats import paired_difference

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
            for task, items in prepared:
                entry = run_task(task, adapter, settings, limit, items)
                for metric, stats in entry["metrics"].items():
                    out[f"eval/{slug(task.name)}/{metric}"] = stats["value"]
            return out
        finally:
            model.train(was_training)

    return run
