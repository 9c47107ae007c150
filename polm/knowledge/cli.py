"""`polm knowledge probe | compare | retention | curriculum`: SliCK categories of a model's QA facts, the
transition matrix between two probes, what a fine-tune kept of the facts known before it, and the
two-stage fine-tuning study.

    polm knowledge probe --model smollm2-135m-instruct --data builtin:wiki-facts --out runs/knowledge/base
    polm knowledge probe configs/knowledge_probe.yaml --seed 1 --out runs/knowledge/base-seed1
    polm knowledge compare runs/knowledge/base runs/knowledge/base-seed1      # the noise-control matrix
    polm knowledge retention configs/knowledge_retention.yaml --after runs/sft/final   # -> runs/sft/retention/
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
from polm.knowledge.report import (
    RETENTION_METRIC,
    counts_summary,
    retention_report,
    write_probe,
    write_retention,
)


@dataclass
class ProbeSet:
    """The facts a probe asks about, and how: one fixed set for every checkpoint that is compared."""

    data: str = "builtin:wiki-facts"
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

    def load(self) -> tuple[list[dict], list[dict]]:
        """(the probed facts, the exemplar pool), the splits checked disjoint."""
        facts = load_facts(self.data)
        check_disjoint(facts, ("train", "dev", "test", "probe"))
        probed = [f for f in facts if f["split"] in self.splits][:self.max_facts or None]
        if not probed:
            raise PolmError(f"'{self.data}' has no facts in the split(s) {self.splits}",
                            fix="Set splits=[...] to splits the data has.")
        return probed, split_of(facts, self.exemplar_split)


@dataclass
class ProbeRun(ProbeSet):
    model: str = "smollm2-135m-instruct"
    output_dir: str = "runs/knowledge/probe"


@dataclass
class RetentionRun(ProbeSet):
    before: str = ""                   # the checkpoint before training (usually the base model)
    after: str = ""                    # the checkpoint after
    output_dir: str = ""               # default: <run>/retention when `after` is a run's final/ directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="knowledge_command", metavar="{probe,compare,retention,curriculum}",
                                required=True)
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
    retention = sub.add_parser("retention", help="accuracy after training on the facts HighlyKnown before it, "
                                                 "and the transitions, for two checkpoints on one probe set")
    retention.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                           help="a YAML config (e.g. configs/knowledge_retention.yaml) and dotted overrides")
    retention.add_argument("--before", help="the checkpoint before training (embedded name, directory or hub id)")
    retention.add_argument("--after", help="the checkpoint after training (e.g. runs/sft/final)")
    retention.add_argument("--data", help="QA facts: a file, builtin:... or hf:...")
    retention.add_argument("--out", help="output directory (default: RUN/retention when --after is RUN/final)")
    curriculum = sub.add_parser("curriculum", help="the two-stage curriculum study with its baselines")
    curriculum.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                            help="a YAML config (e.g. configs/knowledge_curriculum.yaml) and dotted overrides")


def run(args: argparse.Namespace) -> int:
    commands = {"probe": run_probe, "compare": run_compare, "retention": run_retention,
                "curriculum": run_curriculum_command}
    return commands[args.knowledge_command](args)


def config_from(cls, args: argparse.Namespace, flags: dict[str, str | int | None]):
    """`cls` from the optional CONFIG, its key=value overrides, then the flags that were given."""
    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    items += [f"{k}={v}" for k, v in flags.items() if v is not None]
    return load_config(cls, path, items)


def run_probe(args: argparse.Namespace) -> int:
    cfg = config_from(ProbeRun, args, {"model": args.model, "data": args.data, "output_dir": args.out,
                                       "probe.seed": args.seed})
    cfg.validate()
    probed, pool = cfg.load()
    results, hit = cached_probe(cfg.model, probed, pool, cfg.probe)
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


def check_checkpoint(ref: str, flag: str) -> None:
    """Before any probing: a local checkpoint must exist and hold a model (or an adapter)."""
    from polm.models.load import is_path_ref

    path = Path(ref).expanduser()
    if path.is_dir():
        if not any((path / name).is_file() for name in ("config.json", "adapter_config.json")):
            inside = f"; its checkpoint is {path / 'final'}" if (path / "final").is_dir() else ""
            raise PolmError(f"{flag} '{ref}' is a directory without a model (no config.json or adapter_config.json)"
                            f"{inside}", fix="Point at a checkpoint directory, e.g. a run's final/.")
    elif path.exists() or is_path_ref(ref):   # else an embedded name or a hub id, checked when it loads
        what = "is a file, not a checkpoint directory" if path.exists() else "does not exist"
        raise PolmError(f"{flag} checkpoint '{ref}' {what}",
                        fix="Give a checkpoint directory (e.g. a run's final/), an embedded model name or a hub id.")


def retention_dir(cfg: RetentionRun) -> Path:
    """--out, else the run directory of `after` when it is a run's final/ checkpoint, + /retention."""
    if cfg.output_dir:
        return Path(cfg.output_dir)
    after = Path(cfg.after).expanduser()
    if after.name == "final" and (after.parent / "run.json").is_file():
        return after.parent / "retention"
    raise PolmError(f"--after '{cfg.after}' is not a run's final/ checkpoint, so there is no run directory to "
                    "write the retention into", fix="Pass --out DIR.")


def run_retention(args: argparse.Namespace) -> int:
    cfg = config_from(RetentionRun, args, {"before": args.before, "after": args.after, "data": args.data,
                                           "output_dir": args.out})
    cfg.validate()
    for flag, ref in (("--before", cfg.before), ("--after", cfg.after)):
        if not ref:
            raise PolmError(f"no {flag} checkpoint", fix=f"Pass {flag} MODEL (or set {flag[2:]}: in the config).")
        check_checkpoint(ref, flag)
    out = retention_dir(cfg)
    probed, pool = cfg.load()
    before, hit_before = cached_probe(cfg.before, probed, pool, cfg.probe)
    if not any(r["category"] == "HighlyKnown" for r in before):
        counts = ", ".join(f"{c} {n}" for c, n in counts_summary(before)["counts"].items())
        raise PolmError(f"--before '{cfg.before}' knows none of the {len(before)} probed facts well ({counts}): no "
                        "fact is HighlyKnown, so there is no retention to measure",
                        fix="Probe facts it knows (other splits=[...] or data=), more of them (max_facts=0), "
                            "or pass the checkpoint before training as --before.")
    after, hit_after = cached_probe(cfg.after, probed, pool, cfg.probe)
    shared = {"data": cfg.data, "splits": cfg.splits, "max_facts": cfg.max_facts, "settings": cfg.probe.measured()}
    for name, ref, rows, hit in (("before", cfg.before, before, hit_before), ("after", cfg.after, after, hit_after)):
        write_probe(out / name, rows, {"model": ref, "cache_hit": hit, **shared})
    meta = {"before": cfg.before, "after": cfg.after, "before_probe": str(out / "before"),
            "after_probe": str(out / "after"), **shared, "cache_hit": {"before": hit_before, "after": hit_after}}
    report = write_retention(out, retention_report(before, after, meta))
    ret, lower = report["retention"], report["matrix"]["HighlyKnown"]
    print(format_matrix(report["matrix"]))
    print(f"retention {ret['value']:.3f} [{ret['ci_low']:.3f}, {ret['ci_high']:.3f}] ({RETENTION_METRIC}, "
          f"n={ret['n']}); HighlyKnown -> lower {report['highly_known_lost']} (MaybeKnown {lower['MaybeKnown']}, "
          f"WeaklyKnown {lower['WeaklyKnown']}, Unknown {lower['Unknown']}); written to {out}")
    return 0


def run_curriculum_command(args: argparse.Namespace) -> int:
    from polm.knowledge.curriculum import CurriculumConfig, run_curriculum

    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    cfg = load_config(CurriculumConfig, path, items)
    report = run_curriculum(cfg)
    for cond, row in report["conditions"].items():
        acc = row["test_accuracy"]
        idk = f", answers '{cfg.idk_answer}' on {row['test_idk']['value']:.0%}" if row["idk_facts"] else ""
        print(f"{cond:<20} acquired {row['acquired']:>4} HighlyKnown (gained {row['gained']:+d}, "
              f"forgotten {row['forgotten']}), test EM {acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]"
              f"{idk}")
    return 0
