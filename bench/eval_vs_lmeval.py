"""polm eval vs lm-evaluation-harness (HF backend) on the same local-data multiple-choice task.

    python bench/eval_vs_lmeval.py --quick            # 8 GPQA-Diamond items, one timed round (< 2 min, CPU)
    python bench/eval_vs_lmeval.py --limit 198 --repeats 3 --device cuda

Workload: GPQA-Diamond, 4 choices by loglikelihood, plain zero-shot prompts, fp32, batch size 8. The
task is exported from polm's gpqa-diamond (same prompts, same shuffled choices) as an lm-eval task
with local data, so both tools score identical requests. Model loading is excluded on both sides; runs
alternate polm / lm-eval after a warm-up; the figure is the median samples/s over repeats, and the
script fails if the two accuracies differ. Writes bench/results/eval_vs_lmeval.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import common

from polm.io import atomic_write_json

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TASK = "polm_gpqa_bench"


def run_polm(adapter, limit: int) -> tuple[float, float]:
    from polm.eval.runner import evaluate

    start = time.perf_counter()
    result = evaluate(adapter, ["gpqa-diamond"], limit=limit)["tasks"]["gpqa-diamond"]
    return time.perf_counter() - start, result["metrics"]["accuracy"]["value"]


def run_lmeval(hflm, task_dir: Path, limit: int) -> tuple[float, float]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir))
    start = time.perf_counter()
    out = simple_evaluate(model=hflm, tasks=[TASK], task_manager=manager, limit=limit, bootstrap_iters=0)
    return time.perf_counter() - start, out["results"][TASK]["acc,none"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="8 items, one timed round")
    args = parser.parse_args()
    if args.quick:
        args.limit, args.repeats = 8, 1

    from lm_eval.models.huggingface import HFLM

    from polm.assets import resolve_model
    from polm.eval.builtin_tasks import GPQADiamondTask
    from polm.eval.lmeval import export_choice_task
    from polm.eval.model import ModelAdapter

    task = GPQADiamondTask()
    task_dir = Path(tempfile.mkdtemp(prefix="polm-lmeval-"))
    export_choice_task(task, task.load_items()[:args.limit], task_dir, TASK)
    path = resolve_model(args.model)
    adapter = ModelAdapter.load(path, device=args.device, dtype="fp32", batch_size=args.batch_size, chat="false")
    hflm = HFLM(pretrained=path, device=args.device, dtype="float32", batch_size=args.batch_size)

    trials = {"polm": lambda: _measure(run_polm, adapter, args.limit),
              "lm-eval": lambda: _measure(run_lmeval, hflm, task_dir, args.limit)}
    warmups = {"polm": lambda: _measure(run_polm, adapter, 2),    # allocator, kernels, tokenizer caches
               "lm-eval": lambda: _measure(run_lmeval, hflm, task_dir, 2)}
    runs, _ = common.alternate(trials, args.repeats, warmups)
    rate = {name: args.limit / common.median([r["seconds"] for r in rs]) for name, rs in runs.items()}
    accs = {name: sorted({r["accuracy"] for r in rs}) for name, rs in runs.items()}
    result = {"workload": f"gpqa-diamond loglikelihood, {args.limit} items x 4 choices, plain zero-shot",
              "model": args.model, "device": args.device, "batch_size": args.batch_size, "repeats": args.repeats,
              "polm_samples_per_s": round(rate["polm"], 3), "lmeval_samples_per_s": round(rate["lm-eval"], 3),
              "speedup": round(rate["polm"] / rate["lm-eval"], 3), "polm_accuracy": accs["polm"],
              "lmeval_accuracy": accs["lm-eval"], "same_accuracy": accs["polm"] == accs["lm-eval"],
              "peer_options": "lm-eval HFLM defaults (batch_size as above, fp32)",
              "machine": common.machine_description(args.device, ("torch", "transformers", "lm_eval"))}
    print(common.format_table(["workload", "polm samples/s", "lm-eval samples/s", "ratio", "accuracy (both)"],
                              [[result["workload"], rate["polm"], rate["lm-eval"], result["speedup"],
                                f"{accs['polm']} / {accs['lm-eval']}"]]))
    atomic_write_json(common.RESULTS_DIR / "eval_vs_lmeval.json", result)
    return 0 if result["same_accuracy"] else 1


def _measure(fn, *args) -> dict:
    seconds, accuracy = fn(*args)
    return {"seconds": seconds, "accuracy": accuracy}


if __name__ == "__main__":
    sys.exit(main())
