"""The main job: make SmolLM2-135M-Instruct better at arithmetic with LoRA SFT, and show it.

    polm demo configs/demo_arith_sft.yaml

1. measure greedy accuracy of the base model on held-out reasoning-gym problems (fixed test seeds,
   each task's own verifier);
2. generate training problems (different seeds) with step-by-step worked answers, prompted exactly as
   the evaluation prompts them (the eval's answer-format line is `sft.data.prompt_suffix`, so the
   fine-tune records it in `final/polm_prompt.json` and `polm generate` adds it), and LoRA-fine-tune on
   them with `polm sft`;
3. measure the fine-tune on the same held-out problems and print a before/after table with a paired
   bootstrap CI of the gain. Everything lands in the run directory (metrics, loss curve, eval JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from polm.config import add_config_arguments, config_from_args
from polm.data.templating import with_suffix
from polm.errors import PolmError
from polm.eval.builtin_tasks import ANSWER_LINE
from polm.io import atomic_write_json
from polm.recipes.sft import SFTConfig, run_sft
from polm.rundir import check_output_dir


@dataclass
class DemoConfig:
    output_dir: str = "runs/demo-arith-sft"
    eval_tasks: list[str] = field(default_factory=lambda: [
        "arith:basic_arithmetic?n=100&seed=1234&min_terms=2&max_terms=2&min_digits=1&max_digits=2",
        "arith:chain_sum?n=100&seed=1234&min_terms=2&max_terms=3&min_digits=1&max_digits=2",
    ])
    train_per_task: int = 750         # generated training problems per eval task (seed train_seed)
    train_seed: int = 0               # never the test seed
    eval_batch_size: int = 50
    eval_max_new_tokens: int = 64
    sft: SFTConfig = field(default_factory=SFTConfig)
    overwrite: bool = False

    def validate(self) -> None:
        for spec in self.eval_tasks:
            if f"seed={self.train_seed}&" in spec + "&":
                raise PolmError(f"train_seed={self.train_seed} is also the test seed of eval task '{spec}'",
                                fix="Training problems must come from a different seed than the held-out set.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/demo_arith_sft.yaml")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(DemoConfig, args)
    run_demo(cfg)
    return 0


def run_demo(cfg: DemoConfig) -> dict:
    from polm.eval.runner import build_tasks, compare, evaluate, without_records
    from polm.eval.task import EvalSettings

    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir / "sft", resume=cfg.sft.train.resume, overwrite=cfg.overwrite)
    settings = EvalSettings(max_new_tokens=cfg.eval_max_new_tokens)
    tasks = build_tasks(cfg.eval_tasks, settings)
    train_file = write_training_set(tasks, cfg, run_dir)
    cfg.sft.output_dir, cfg.sft.data.train, cfg.sft.overwrite = str(run_dir / "sft"), str(train_file), cfg.overwrite
    cfg.sft.data.prompt_suffix = ANSWER_LINE
    timings: dict[str, float] = {}
    eval_kw = dict(settings=settings, batch_size=cfg.eval_batch_size, device=cfg.sft.model.device)

    start = time.perf_counter()
    before = evaluate(cfg.sft.model.name, cfg.eval_tasks, out_dir=run_dir / "eval" / "before", **eval_kw)
    timings["eval_before_s"] = time.perf_counter() - start

    start = time.perf_counter()
    sft = run_sft(cfg.sft)
    timings["sft_s"] = time.perf_counter() - start

    start = time.perf_counter()
    after = evaluate(sft["final_dir"], cfg.eval_tasks, out_dir=run_dir / "eval" / "after", **eval_kw)
    timings["eval_after_s"] = time.perf_counter() - start

    gains = compare(before, after)
    summary = {"before": without_records(before), "after": without_records(after), "gain": gains,
               "sft": {k: v for k, v in sft.items() if k != "model"}, "timings": timings}
    atomic_write_json(run_dir / "demo.json", summary)
    print_table(before, after, gains, timings)
    return summary


def write_training_set(tasks, cfg: DemoConfig, run_dir: Path) -> Path:
    """Fresh problems (train seed) with worked answers; each prompt + the answer-format suffix SFT adds
    (`ANSWER_LINE`) is exactly the question the eval asks."""
    from polm.eval.builtin_tasks import ArithTask

    rows = []
    for task in tasks:
        if not isinstance(task, ArithTask):
            raise PolmError(f"demo eval task '{task.name}' is not a generated arith: task",
                            fix="Use arith:<reasoning-gym task> specs in eval_tasks.")
        for record in task._load(cfg.train_per_task, cfg.train_seed):
            assert with_suffix(record["prompt"], ANSWER_LINE) == task.question(record)
            rows.append({"prompt": record["prompt"], "completion": record["completion"]})
    path = run_dir / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def print_table(before: dict, after: dict, gains: dict, timings: dict) -> None:
    table = Table(title="Greedy accuracy on held-out problems (95% bootstrap CI)")
    for col in ("task", "n", "before", "after", "gain (paired CI)"):
        table.add_column(col)
    for name, entry in before["tasks"].items():
        b, a = entry["metrics"]["accuracy"], after["tasks"][name]["metrics"]["accuracy"]
        g = gains[name]
        table.add_row(name.split("?")[0], str(entry["n"]), _fmt(b), _fmt(a),
                      f"{g['diff']:+.1%} [{g['ci_low']:+.1%}, {g['ci_high']:+.1%}]")
    console = Console(width=max(Console().width, 110))
    console.print(table)
    console.print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))


def _fmt(stats: dict) -> str:
    return f"{stats['value']:.1%} [{stats['ci_low']:.1%}, {stats['ci_high']:.1%}]"
