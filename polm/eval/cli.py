"""`polm eval`: evaluate one or more models on tasks, print a table, write JSON.

    polm eval --model smollm2-135m-instruct --task gsm8k --task arith:chain_sum --limit 50
    polm eval --model base --model runs/sft/final --task gpqa-diamond --mode few-shot --out runs/eval-ab
    polm eval --config configs/eval_smollm2.yaml --limit 20

Writes OUT/results.json (metrics with 95% CIs and n per model and task, plus paired differences
B − A when two or more models are given) and OUT/<model>/<task>.json with the per-item records.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from polm.errors import PolmError
from polm.eval.task import MODES, EvalSettings


@dataclass
class EvalConfig:
    """`polm eval --config FILE`: the same settings as the flags (flags given on the command line win;
    --model and --task add to the file's lists)."""

    models: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    mode: Literal["zero-shot", "few-shot", "cot", "self-consistency"] = "zero-shot"
    num_fewshot: int = 3
    samples: int = 5
    temperature: float = 0.7
    seed: int = 1234
    max_new_tokens: int | None = None
    batch_size: int = 8
    device: str = "auto"
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    chat: Literal["auto", "true", "false"] = "auto"
    prompt_format: bool = True     # apply a model directory's recorded prompt format (polm_prompt.json)
    out: str | None = None
    judge: str | None = None
    judge_prompts: str | None = None
    rubric: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="YAML with these settings (see configs/eval_*.yaml)")
    parser.add_argument("--model", action="append", default=[],
                        help="embedded name, local (adapter) directory or hub id; repeat to compare models")
    parser.add_argument("--task", action="append", default=[],
                        help="task spec, e.g. gsm8k, arith:chain_sum?n=100, gpqa-diamond?method=generate, "
                             "my_task.yaml, pkg.module:factory (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N items of each task")
    parser.add_argument("--mode", default="zero-shot", choices=MODES)
    parser.add_argument("--num-fewshot", type=int, default=3, help="exemplars in few-shot mode")
    parser.add_argument("--samples", type=int, default=5, help="samples per item for self-consistency")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature when sampling")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: each task's own")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--chat", default="auto", choices=["auto", "true", "false"],
                        help="apply the tokenizer's chat template (auto: when it has one)")
    parser.add_argument("--no-prompt-format", dest="prompt_format", action="store_false",
                        help="ignore the prompt format a model directory records (polm_prompt.json): its "
                             "chat choice, system prompt and end-of-turn stop; tasks always use their own "
                             "answer instructions, never the recorded suffix")
    parser.add_argument("--out", default=None, help="output directory (default runs/eval-<time>)")
    parser.add_argument("--list-tasks", action="store_true", help="list the registered tasks and exit")
    parser.add_argument("--judge", default=None,
                        help="judge model: with exactly two --model, report A's pairwise win rate over B")
    parser.add_argument("--judge-prompts", default=None,
                        help="JSONL of prompts for the judge comparison ('prompt' or 'messages' per line)")
    parser.add_argument("--rubric", default=None, help="the judge's rubric (default: helpful, correct, concise)")


def run(args: argparse.Namespace) -> int:
    from polm.eval.runner import prepare

    if args.list_tasks:
        from polm.eval.registry import task_names

        print("\n".join(task_names()))
        return 0
    if args.config:
        _apply_config(args)
    _check_args(args)
    settings = EvalSettings(mode=args.mode, num_fewshot=args.num_fewshot, samples=args.samples,
                            temperature=args.temperature, seed=args.seed, max_new_tokens=args.max_new_tokens)
    prepared = prepare(args.task, settings, args.limit)   # specs, modes and data checked before a model loads
    prompts = _judge_prompts(args)
    out = Path(args.out or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    results = [_evaluate_model(ref, args, settings, prepared, out) for ref in args.model] if prepared else []
    judged = _judge(args, prompts, out) if prompts else None
    summary = _summary(results, args, out, judged)
    print_tables(summary)
    print(f"results: {out / 'results.json'}")
    return 0


def _apply_config(args: argparse.Namespace) -> None:
    """Fill every flag left at its default from the config file; lists are the file's plus the flags'."""
    from polm.config import load_config

    cfg = load_config(EvalConfig, args.config)
    defaults = EvalConfig()
    args.model = cfg.models + args.model
    args.task = cfg.tasks + args.task
    for f in fields(EvalConfig):
        if f.name not in ("models", "tasks") and getattr(args, f.name) == getattr(defaults, f.name):
            setattr(args, f.name, getattr(cfg, f.name))


def _check_args(args: argparse.Namespace) -> None:
    if not args.model:
        raise PolmError("no model given", fix="Pass --model NAME_OR_DIR (repeat it to compare models).")
    if not args.task and not args.judge:
        raise PolmError("no task given", fix="Pass --task NAME (see `polm eval --list-tasks`) or --judge MODEL.")
    if args.judge and (len(args.model) != 2 or not args.judge_prompts):
        raise PolmError("--judge compares exactly two models on a prompt set",
                        fix="Pass --model A --model B --judge JUDGE --judge-prompts prompts.jsonl.")
    for key in ("limit", "samples", "batch_size", "max_new_tokens"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise PolmError(f"--{key.replace('_', '-')} must be at least 1, got {value}")


def _evaluate_model(ref: str, args: argparse.Namespace, settings: EvalSettings, prepared: list,
                    out: Path) -> dict[str, Any]:
    from polm.eval.model import ModelAdapter
    from polm.eval.runner import evaluate, slug

    adapter = ModelAdapter.load(ref, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                                chat=args.chat, prompt_format=args.prompt_format)
    result = evaluate(adapter, args.task, limit=args.limit, settings=settings, out_dir=out / slug(ref),
                      prepared=prepared)
    del adapter   # free the model before the next one loads
    return result


def _judge_prompts(args: argparse.Namespace) -> list | None:
    if not args.judge:
        return None
    from polm.generate import read_prompts

    return read_prompts(args.judge_prompts)[:args.limit]


def _judge(args: argparse.Namespace, prompts: list, out: Path) -> dict[str, Any]:
    from polm.eval.judge import DEFAULT_RUBRIC, pairwise_win_rate
    from polm.eval.model import ModelAdapter
    from polm.io import atomic_write_json

    a, b, judge = (ModelAdapter.load(ref, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                                     chat=args.chat, prompt_format=args.prompt_format)
                   for ref in (*args.model, args.judge))
    result = pairwise_win_rate(a, b, judge, prompts, rubric=args.rubric or DEFAULT_RUBRIC,
                               max_new_tokens=args.max_new_tokens or 256, seed=args.seed)
    atomic_write_json(out / "judge.json", result)
    return {k: v for k, v in result.items() if k != "records"}


def _summary(results: list[dict[str, Any]], args: argparse.Namespace, out: Path,
             judged: dict[str, Any] | None) -> dict[str, Any]:
    from polm.eval.runner import compare, without_records
    from polm.io import atomic_write_json

    summary: dict[str, Any] = {
        "command": "polm eval", "models": args.model, "tasks": args.task, "limit": args.limit,
        "results": [without_records(r) for r in results],
        "comparisons": [{"model_a": results[0]["model"], "model_b": other["model"],
                         "tasks": compare(results[0], other, seed=args.seed)} for other in results[1:]]}
    if judged:
        summary["judge"] = judged
    atomic_write_json(out / "results.json", summary)
    return summary


def _fmt(value: float) -> str:
    return f"{value:.4g}" if abs(value) >= 10 else f"{value:.3f}"


def print_tables(summary: dict[str, Any]) -> None:
    """The metrics table (value, 95% CI, n, time) and, for several models, the paired differences."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="polm eval")
    for col in ("model", "task", "metric", "value", "95% CI", "n", "samples/s"):
        table.add_column(col, justify="right" if col in ("value", "n", "samples/s") else "left")
    for result in summary["results"]:
        for name, entry in result["tasks"].items():
            for metric, st in entry["metrics"].items():
                table.add_row(result["model"], name, metric, _fmt(st["value"]),
                              f"[{_fmt(st['ci_low'])}, {_fmt(st['ci_high'])}]", str(st["n"]),
                              f"{entry['samples_per_s']:.2f}")
    console = Console()
    if not console.is_terminal:   # piped or logged: do not squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)
    for comp in summary["comparisons"]:
        diff = Table(title=f"paired difference: {comp['model_b']} − {comp['model_a']}")
        for col in ("task", "metric", "difference", "95% CI", "n"):
            diff.add_column(col)
        for name, d in comp["tasks"].items():
            diff.add_row(name, d["metric"], f"{d['diff']:+.3f}", f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]",
                         str(d["n"]))
        console.print(diff)
    if "judge" in summary:
        j = summary["judge"]
        console.print(f"judge {j['judge']}: win rate of {j['model_a']} over {j['model_b']} = {j['win_rate']:.3f} "
                      f"[{j['ci_low']:.3f}, {j['ci_high']:.3f}] (n={j['n']}: {j['wins']} wins, {j['ties']} ties, "
                      f"{j['losses']} losses; both orders agreed on {j['consistent']})")
