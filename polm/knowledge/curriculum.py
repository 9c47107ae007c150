"""The knowledge curriculum as one resumable run (Li et al. 2024, "Gradual Learning", arXiv 2410.05802,
on the SliCK categories of Gekhman et al. 2024), with its one-stage baselines in the same run directory.

    polm knowledge curriculum configs/knowledge_curriculum.yaml

1. probe the base model on the train facts (and the test facts, for accuracy by base category);
2. stage 1: LoRA SFT on the MaybeKnown train facts, early-stopped on the dev split (never test);
3. re-probe the train facts;
4. stage 2, from stage 1's adapter at a lower lr: MaybeKnown ∪ facts upgraded from WeaklyKnown/Unknown
   ∪ a replay fraction of the HighlyKnown ones (and the same without replay, a baseline);
5. one-stage baselines from the base model with the two stages' step budget: all train facts, MaybeKnown;
   and, when asked for, all train facts with the Unknown ones answered "I don't know" (Gekhman et al. 2024);
6. per condition: the final probe of the train facts, its retention of the base's HighlyKnown facts, and
   zero-shot test accuracy (and how often it answers "I don't know"); then report.json.
Each finished stage is recorded in stages.json, and a rerun continues after the last one.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from polm.config import to_dict
from polm.errors import PolmError
from polm.eval.stats import summarize
from polm.io import atomic_write_json
from polm.knowledge.categories import (
    CATEGORIES,
    knowledge_metrics,
    relative_gain,
    transition_matrix,
    transition_summary,
)
from polm.knowledge.facts import check_disjoint, fact_key, is_correct, load_facts, split_of
from polm.knowledge.probe import ProbeConfig, cached_probe, read_results
from polm.knowledge.report import retention_report, write_probe, write_retention
from polm.knowledge.training import train_stage, zero_shot_answers
from polm.models import LoraConfig, ModelConfig, attach_adapter, load_model, load_tokenizer
from polm.rundir import check_output_dir, first_config_difference, run_directory
from polm.train.config import TrainConfig
from polm.train.loop import seed_everything

CONDITIONS = ("two_stage", "two_stage_no_replay", "one_stage_all", "one_stage_maybe", "one_stage_all_idk")
DEFAULT_CONDITIONS = CONDITIONS[:4]   # one_stage_all_idk runs only when `conditions` names it
STAGES_FILE = "stages.json"


@dataclass
class CurriculumConfig:
    output_dir: str = "runs/knowledge-curriculum"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: str = "builtin:wiki-facts"
    exemplar_split: str = "dev"        # k-shot exemplars; never test
    max_facts: dict[str, int] = field(default_factory=dict)   # per split, first N (e.g. {train: 200}); none = all
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    noise_control: bool = True         # probe the base twice (seed, seed + 1): the noise transition matrix
    lora: LoraConfig = field(default_factory=LoraConfig)
    stage1: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4, max_steps=100, eval_every=20))
    stage2: TrainConfig = field(default_factory=lambda: TrainConfig(lr=3e-5, max_steps=100, eval_every=20))
    replay_fraction: float = 0.5       # of the base's HighlyKnown train facts, drawn with `seed`
    conditions: list[str] = field(default_factory=lambda: list(DEFAULT_CONDITIONS))
    idk_answer: str = "I don't know"   # one_stage_all_idk: the answer its base-Unknown train facts are trained on
    max_length: int = 128
    seed: int = 0
    overwrite: bool = False

    def validate(self) -> None:
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise PolmError(f"unknown curriculum condition(s) {unknown}", fix=f"Use some of {list(CONDITIONS)}.")
        if self.exemplar_split not in ("dev", "probe"):
            raise PolmError(f"exemplar_split is {self.exemplar_split}: k-shot exemplars come from dev or probe "
                            "facts, never from the probed train facts or the test facts",
                            fix="Use exemplar_split: dev (or probe).")
        if "one_stage_all_idk" in self.conditions and not self.idk_answer.strip():
            raise PolmError("idk_answer is empty, and one_stage_all_idk trains its Unknown facts on it",
                            fix="Set idk_answer: I don't know (or drop one_stage_all_idk from conditions).")
        if not 0 <= self.replay_fraction <= 1:
            raise PolmError(f"replay_fraction must be in [0, 1], got {self.replay_fraction}")
        for name in ("stage1", "stage2"):
            if getattr(self, name).max_steps <= 0:
                raise PolmError(f"{name}.max_steps must be > 0: the baselines get the two stages' step budget")


class Study:
    """The run directory and its stages.json: each stage runs once, its result is recorded when it ends."""

    def __init__(self, cfg: CurriculumConfig):
        self.cfg, self.dir = cfg, Path(cfg.output_dir)
        path = self.dir / STAGES_FILE
        self.done: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def stage(self, name: str, fn) -> Any:
        if name in self.done:
            return self.done[name]
        shutil.rmtree(self.dir / name, ignore_errors=True)   # an unfinished stage starts over
        print(f"polm knowledge: stage {name}", flush=True)
        self.done[name] = fn(self.dir / name)
        atomic_write_json(self.dir / STAGES_FILE, self.done)
        return self.done[name]


def check_same_config(run_dir: Path, cfg: CurriculumConfig) -> None:
    """A study is continued only under the settings its finished stages ran with."""
    saved = run_dir / "config.yaml"
    if not (run_dir / STAGES_FILE).is_file() or not saved.is_file():
        return
    new = yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    diff = first_config_difference(yaml.safe_load(saved.read_text()) or {}, new)
    if diff is not None:
        raise PolmError(f"output directory '{run_dir}' holds stages run with other settings: {diff[0]} was "
                        f"{diff[1]!r}, now {diff[2]!r}", fix="Rerun with the same settings, or pass overwrite=true.")


def load_study_facts(cfg: CurriculumConfig) -> dict[str, list[dict]]:
    """{train, dev, test, exemplars}: facts by split (first max_facts[split]), the splits disjoint."""
    facts = load_facts(cfg.data)
    check_disjoint(facts, ("train", "dev", "test", "probe"))
    out = {s: split_of(facts, s)[:cfg.max_facts.get(s) or None] for s in ("train", "dev", "test", "probe")}
    out["exemplars"] = out[cfg.exemplar_split] if cfg.exemplar_split in out else []
    for split in ("train", "test"):
        if not out[split]:
            raise PolmError(f"'{cfg.data}' has no {split} facts", fix="The study needs train, dev and test facts.")
    return out


def run_curriculum(cfg: CurriculumConfig) -> dict[str, Any]:
    cfg.validate()
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume=True, overwrite=cfg.overwrite)
    check_same_config(run_dir, cfg)
    facts = load_study_facts(cfg)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    lineage = {"model": cfg.model.name, "data": cfg.data}
    with run_directory(run_dir, cfg, recipe="knowledge-curriculum", overwrite=cfg.overwrite, lineage=lineage):
        study = Study(cfg)
        report = _run_stages(study, facts, tokenizer)
        atomic_write_json(run_dir / "report.json", report)
    return report


def _probe_to(out: Path, model_ref: str, facts: list[dict], pool: list[dict], cfg: ProbeConfig,
              model=None, tokenizer=None) -> dict[str, Any]:
    results, hit = cached_probe(model_ref, facts, pool, cfg, model=model, tokenizer=tokenizer)
    summary = write_probe(out, results, {"model": model_ref, "cache_hit": hit, "settings": cfg.measured()})
    return {"dir": str(out), "counts": summary["counts"]}


def _categories(stage_result: dict) -> dict[str, str]:
    return {r["key"]: r["category"] for r in read_results(stage_result["dir"])}


def _run_stages(study: Study, facts: dict[str, list[dict]], tokenizer) -> dict[str, Any]:
    cfg, pool, base = study.cfg, facts["exemplars"], study.cfg.model.name
    probe_base = study.stage("probe_base", lambda d: _probe_to(d, base, facts["train"] + facts["test"], pool, cfg.probe))
    base_cat = _categories(probe_base)
    noise = None
    if cfg.noise_control:
        noise_cfg = replace(cfg.probe, seed=cfg.probe.seed + 1)
        again = study.stage("probe_noise", lambda d: _probe_to(d, base, facts["train"], pool, noise_cfg))
        noise = transition_matrix(base_cat, _categories(again))
    train_keys = {r["key"]: r for r in read_results(probe_base["dir"]) if r["split"] == "train"}
    by_key = {fact_key(f): f for f in facts["train"]}
    in_category = {c: [by_key[k] for k, r in train_keys.items() if r["category"] == c] for c in CATEGORIES}

    def fresh_stage(records: list[dict], train_cfg: TrainConfig, idk: frozenset[str] = frozenset()):
        def run(d: Path) -> dict:
            seed_everything(train_cfg.seed)
            model = attach_adapter(load_model(cfg.model), cfg.lora)
            return _train_and_eval(d, model, tokenizer, records, facts, pool, train_cfg, cfg, idk)
        return run

    def continued_stage(records_fn, train_cfg: TrainConfig):
        def run(d: Path) -> dict:
            seed_everything(train_cfg.seed)
            model = load_model(replace(cfg.model, name=study.done["stage1"]["final_dir"]), trainable=True)
            return _train_and_eval(d, model, tokenizer, records_fn(), facts, pool, train_cfg, cfg)
        return run

    maybe = in_category["MaybeKnown"]
    budget = replace(cfg.stage1, max_steps=cfg.stage1.max_steps + cfg.stage2.max_steps)   # the two stages' steps
    if {"two_stage", "two_stage_no_replay"} & set(cfg.conditions):
        study.stage("stage1", fresh_stage(maybe, cfg.stage1))

    def stage2_facts(replay: bool) -> list[dict]:
        after1 = _categories(study.done["stage1"]["probe"])
        upgraded = [f for c in ("WeaklyKnown", "Unknown") for f in in_category[c]
                    if after1.get(fact_key(f)) in ("HighlyKnown", "MaybeKnown")]
        highly = in_category["HighlyKnown"]
        n_replay = round(cfg.replay_fraction * len(highly)) if replay else 0
        return maybe + upgraded + random.Random(cfg.seed).sample(highly, n_replay)

    runs = {"two_stage": lambda: continued_stage(lambda: stage2_facts(True), cfg.stage2),
            "two_stage_no_replay": lambda: continued_stage(lambda: stage2_facts(False), cfg.stage2),
            "one_stage_all": lambda: fresh_stage(facts["train"], budget),
            "one_stage_maybe": lambda: fresh_stage(maybe, budget),
            "one_stage_all_idk": lambda: fresh_stage(facts["train"], budget,
                                                     frozenset(fact_key(f) for f in in_category["Unknown"]))}
    results = {c: study.stage(c, runs[c]()) for c in cfg.conditions}
    retention = {c: _write_retention(study.dir / c / "retention", probe_base, res, cfg) for c, res in results.items()}
    return build_report(base_cat, results, noise, study, facts, retention)


def _write_retention(out: Path, probe_base: dict, res: dict, cfg: CurriculumConfig) -> dict[str, Any]:
    """A condition's retention/ (what `polm knowledge retention` writes) from the probes the study already
    holds of the train facts, the base's and the condition's final one: nothing is probed again."""
    base_train = [r for r in read_results(probe_base["dir"]) if r["split"] == "train"]
    meta = {"before": cfg.model.name, "after": res["final_dir"], "before_probe": probe_base["dir"],
            "after_probe": res["probe"]["dir"], "data": cfg.data, "splits": ["train"],
            "max_facts": cfg.max_facts.get("train", 0), "settings": cfg.probe.measured()}
    return write_retention(out, retention_report(base_train, read_results(res["probe"]["dir"]), meta))


def _train_and_eval(d: Path, model, tokenizer, records: list[dict], facts: dict[str, list[dict]],
                    pool: list[dict], train_cfg: TrainConfig, cfg: CurriculumConfig,
                    idk: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Train one stage (the facts keyed in `idk` with the answer `cfg.idk_answer`), then probe its model on
    the train facts (against their true answers) and score it on the test facts."""
    relabelled = [{**f, "answer": cfg.idk_answer, "aliases": []} if fact_key(f) in idk else f for f in records]
    out = train_stage(model, tokenizer, relabelled, facts["dev"], train_cfg, d, max_length=cfg.max_length,
                      lineage={"model": cfg.model.name, "data": cfg.data})
    out["trained_keys"] = [fact_key(f) for f in records]
    out["idk_keys"] = [k for k in out["trained_keys"] if k in idk]
    out["probe"] = _probe_to(d / "probe", out["final_dir"], facts["train"], pool, cfg.probe, model, tokenizer)
    answers = zero_shot_answers(model, tokenizer, facts["test"], max_new_tokens=cfg.probe.max_new_tokens)
    out["test_correct"] = [float(is_correct(a, f)) for a, f in zip(answers, facts["test"])]
    out["test_idk"] = [float(is_correct(a, {"answer": cfg.idk_answer})) for a in answers]
    return out


def build_report(base_cat: dict[str, str], results: dict[str, dict], noise: dict | None, study: Study,
                 facts: dict[str, list[dict]], retention: dict[str, dict]) -> dict[str, Any]:
    """One row per condition: knowledge metrics on the train facts (vs the base probe), the transition
    matrix, the retention, test accuracy overall and by the test facts' base category (each with a
    bootstrap CI)."""
    train_keys = {fact_key(f) for f in facts["train"]}
    base_train = {k: v for k, v in base_cat.items() if k in train_keys}
    test_cat = [base_cat.get(fact_key(f)) for f in facts["test"]]
    rows = {}
    for cond, res in results.items():
        after = _categories(res["probe"])
        matrix = transition_matrix(base_train, after)
        correct, idk = res["test_correct"], res["test_idk"]
        by_cat = {c: summarize([x for x, tc in zip(correct, test_cat) if tc == c]) for c in CATEGORIES}
        acquired = summarize([float(after.get(k) == "HighlyKnown") for k in sorted(base_train)])
        rows[cond] = {**knowledge_metrics(base_train, after), "acquired_share": acquired,
                      "retention": retention[cond]["retention"], "transitions": transition_summary(matrix),
                      "matrix": matrix, "test_accuracy": summarize(correct), "test_accuracy_by_base_category": by_cat,
                      "test_idk": summarize(idk),
                      "test_accuracy_answered": summarize([c for c, i in zip(correct, idk) if not i]),
                      "trained_facts": res["facts"], "idk_facts": len(res["idk_keys"]), "best_step": res["best_step"], "dev_em": res["dev_em"]}
    if "one_stage_all" in rows:
        for row in rows.values():
            row["relative_gain_vs_one_stage_all"] = relative_gain(row["acquired"], rows["one_stage_all"]["acquired"])
    return {"base_counts": study.done["probe_base"]["counts"], "conditions": rows, "noise_matrix": noise,
            "noise_summary": transition_summary(noise) if noise else None}

