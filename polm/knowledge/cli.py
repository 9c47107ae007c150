"""`polm knowledge probe | compare | curriculum`: SliCK categories of a model's QA facts, the transition
matrix between two probes, and the two-stage fine-tuning study.

    polm knowledge probe --model smollm2-135m-instruct --data builtin:wiki-facts --out runs/knowledge/base
    polm knowledge probe configs/knowledge_probe.yaml --seed 1 --out runs/knowledge/base-seed1
    polm knowledge compare runs/knowledge/base runs/knowledge/base-seed1      # the noise-control matrix
    polm knowledge curriculum configs/knowledge_curriculum.yaml
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from polm.config import load_config
from polm.errors import PolmError
from polm.io import atomic_write_json
from polm.knowledge.categories import format_matrix, transition_matrix, transition_summary
from polm.knowledge.facts import check_disjoint, load_facts, split_of
from polm.knowledge.probe import ProbeConfig, cached_probe, read_results, validation_report
from polm.knowledge.report import write_probe


@dataclass
class ProbeRun:
    model: str = "smollm2-135m-instruct"
    data: str = "builtin:wiki-facts"
    output_dir: str = "runs/knowledge/probe"
    splits: list[str] = field(default_factory=lambda: ["train"])   # the facts probed
    exemplar_split: str = "dev"        # the k-shot exemplar pool; never test
    max_facts: int = 0                 # first N probed facts; 0 = all
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def validate(self) -> None:
        if self.exemplar_split == "test":
            raise PolmError("exemplar_split is test: k-shot exemplars must never come from the test facts",
                            fix="Use exemplar_split=dev (or probe).")
        if self.exemplar_split in self.splits:
            raise PolmError(f"exemplar_split '{self.exemplar_split}' is also a probed split",
                            fix="Probe other splits than the exemplar pool's.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="knowledge_command", metavar="{probe,compare,curriculum}", required=True)
    probe = sub.add_parser("probe", help="SliCK categories of a model's QA facts")
    probe.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                       help="a YAML config (e.g. configs/knowledge_probe.yaml) and dotted overrides (probe.k_shot=2)")
    probe.add_argument("--model", help="model reference (embedded name, directory, adapter or hub id)")
    probe.add_argument("--data", help="QA facts: a file, builtin:... or hf:...")
    probe.add_argument("--out", help="output directory")
    probe.add_argument("--seed", type=int, help="prompt and sampling seed (two seeds = the noise control)")
    compare = sub.add_parser("compare", help="transition matrix between two probes")
    compare.add_argument("before", help="probe directory (or facts.jsonl) A")
    compare.add_argument("after", help="probe directory (or facts.jsonl) B")
    compare.add_argument("--out", help="write the matrix JSON here")
    curriculum = sub.add_parser("curriculum", help="the two-stage curriculum study with its baselines")
    curriculum.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                            help="a YAML config (e.g. configs/knowledge_curriculum.yaml) and dotted overrides")


def run(args: argparse.Namespace) -> int:
    return {"probe": run_probe, "compare": run_compare, "curriculum": run_curriculum_command}[args.knowledge_command](args)


def probe_config(args: argparse.Namespace) -> ProbeRun:
    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    flags = {"model": args.model, "data": args.data, "output_dir": args.out, "probe.seed": args.seed}
    items += [f"{k}={v}" for k, v in flags.items() if v is not None]
    return load_config(ProbeRun, path, items)


def run_probe(args: argparse.Namespace) -> int:
    cfg = probe_config(args)
    cfg.validate()
    facts = load_facts(cfg.data)
    check_disjoint(facts, ("train", "dev", "test", "probe"))
    probed = [f for f in facts if f["split"] in cfg.splits][:cfg.max_facts or None]
    if not probed:
        raise PolmError(f"'{cfg.data}' has no facts in the split(s) {cfg.splits}", fix="Set splits=[...] to "
                                                                                       "splits the data has.")
    results, hit = cached_probe(cfg.model, probed, split_of(facts, cfg.exemplar_split), cfg.probe)
    meta = {"model": cfg.model, "data": cfg.data, "splits": cfg.splits, "cache_hit": hit,
            "settings": cfg.probe.measured()}
    out = Path(cfg.output_dir)
    summary = write_probe(out, results, meta)
    if cfg.probe.method == "teacher_forced" and cfg.probe.validate_facts:
        check = validation_report(results)
        atomic_write_json(out / "validate.json", check)
        print(f"teacher-forced vs sampling on {check['facts']} facts: categories agree on {check['agreement']:.1%}")
    shares = ", ".join(f"{c} {n} ({summary['shares'][c]:.0%})" for c, n in summary["counts"].items())
    print(f"{summary['facts']} facts{' (cached)' if hit else ''}: {shares}; written to {out}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    before = {r["key"]: r["category"] for r in read_results(args.before)}
    after = {r["key"]: r["category"] for r in read_results(args.after)}
    if not before.keys() & after.keys():
        raise PolmError(f"'{args.before}' and '{args.after}' probed no fact in common",
                        fix="Compare two probes of the same facts.")
    matrix = transition_matrix(before, after)
    summary = transition_summary(matrix)
    print(format_matrix(matrix))
    print(json.dumps(summary))
    if args.out:
        atomic_write_json(args.out, {"before": args.before, "after": args.after, "matrix": matrix, **summary})
    return 0


def run_curriculum_command(args: argparse.Namespace) -> int:
    from polm.knowledge.curriculum import CurriculumConfig, run_curriculum

    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    report = run_curriculum(load_config(CurriculumConfig, path, items))
    for cond, row in report["conditions"].items():
        acc = row["test_accuracy"]
        print(f"{cond:<20} acquired {row['acquired']:>4} HighlyKnown (gained {row['gained']:+d}, "
              f"forgotten {row['forgotten']}), test EM {acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]")
    return 0
