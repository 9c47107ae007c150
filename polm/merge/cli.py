"""`polm merge CONFIG [key=value ...]`: merge fine-tunes of one base into a Hugging Face model directory.

    polm merge configs/merge_ties.yaml output=runs/merge/ties parameters.normalize=false
    polm merge configs/merge_slerp.yaml --check      # run every check, write nothing
"""

from __future__ import annotations

import argparse
import sys

from polm.merge.config import load_merge_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                        help="a YAML config (e.g. configs/merge_ties.yaml) followed by dotted overrides")
    parser.add_argument("--check", action="store_true",
                        help="open every input and run all compatibility checks, then stop without writing")


def run(args: argparse.Namespace) -> int:
    from polm.merge.runner import build_plan, execute

    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    cfg = load_merge_config(path, items)
    plan = build_plan(cfg)
    inputs = ", ".join(inp.ref for inp in plan.inputs)
    summary = f"{plan.spec.name} of {len(plan.inputs)} model(s) [{inputs}]" + (f" on base {cfg.base}" if cfg.base else "")
    if args.check:
        print(f"checks passed: {summary}; {len(plan.tensors)} tensors would be written to {plan.output}")
        return 0
    out = execute(plan, _progress if sys.stderr.isatty() else None)
    print(f"merged {summary}: {len(plan.tensors)} tensors written to {out}")
    return 0


def _progress(done: int, total: int) -> None:
    end = "\n" if done == total else ""
    print(f"\rmerging tensors: {done}/{total}", end=end, file=sys.stderr, flush=True)
