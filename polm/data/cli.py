"""`polm data preferences ...`: build preference pairs offline, each written as JSONL with provenance;
`polm data distill CONFIG`: a teacher's generations as an SFT dataset (polm.data.distill).

    polm data preferences onpolicy   --model smollm2-135m-instruct --data "builtin:reasoning-gym/basic_arithmetic?n=500&seed=3" --out pairs.jsonl
    polm data preferences references --data builtin:gsm8k-test --out pairs.jsonl --perturb wrong-number,truncate
    polm data preferences judge      --model M --judge J --data prompts.jsonl --out pairs.jsonl

onpolicy: sample n answers per prompt, score each with the record's verifier (reasoning-gym scorer,
GSM8K numeric match), pair a correct answer with an incorrect one. references: chosen = the worked
reference answer, rejected = a perturbed copy (final number changed, or reasoning cut short). judge
(RLAIF): a judge model compares two samples in both orders; pairs whose verdicts disagree (or tie)
are dropped.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from polm.config import add_config_arguments
from polm.data.loaders import load_records
from polm.data.templating import with_suffix
from polm.errors import PolmError
from polm.io import atomic_write_json, atomic_write_text

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="KIND", required=True)
    distill = sub.add_parser("distill", help="sequence-level KD: a teacher's generations as an SFT dataset")
    add_config_arguments(distill, "configs/distill_data.yaml")
    prefs = sub.add_parser("preferences", help="build preference pairs")
    kinds = prefs.add_subparsers(dest="builder", metavar="BUILDER", required=True)
    for name, text in (("onpolicy", "sample from a model, pair verified-correct with incorrect answers"),
                       ("references", "chosen = reference answer, rejected = a perturbed copy"),
                       ("judge", "a judge model ranks two samples, both orders, ties dropped")):
        p = kinds.add_parser(name, help=text, description=text)
        p.add_argument("--data", required=True, help="prompt records (file, builtin:..., hf:...)")
        p.add_argument("--out", required=True, help="output .jsonl")
        p.add_argument("--limit", type=int, default=None, help="use the first N records")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--prompt-suffix", default="",
                       help="appended to every prompt on a new line, e.g. the eval's answer-format instruction")
        if name == "references":
            p.add_argument("--perturb", default="wrong-number,truncate",
                           help="comma list of: wrong-number, truncate (used in turn)")
            continue
        p.add_argument("--model", required=True, help="the model whose samples are paired")
        p.add_argument("--num-samples", type=int, default=8 if name == "onpolicy" else 2)
        p.add_argument("--temperature", type=float, default=0.8)
        p.add_argument("--max-new-tokens", type=int, default=128)
        p.add_argument("--batch-size", type=int, default=16)
        if name == "onpolicy":
            p.add_argument("--pairs-per-prompt", type=int, default=1)
            p.add_argument("--min-chosen-score", type=float, default=1.0,
                           help="a chosen sample must score at least this (1.0: verified correct; 0: the best-scored "
                                "sample of its group, e.g. a partial-credit answer, against a lower-scored one)")
        else:
            p.add_argument("--judge", required=True, help="the judge model")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "distill":
        from polm.data.distill import run as run_distill

        return run_distill(args)
    loaded = load_records(args.data, require_targets=args.builder == "references", allowed={"prompt_completion"})
    records = loaded.records[:args.limit] if args.limit else loaded.records
    if args.prompt_suffix:
        records = [{**r, "prompt": with_suffix(r["prompt"], args.prompt_suffix)} for r in records]
    builder = {"onpolicy": onpolicy_pairs, "references": reference_pairs, "judge": judged_pairs}[args.builder]
    pairs, stats = builder(records, args)
    if not pairs:
        raise PolmError(f"no pair was built from {len(records)} records ({stats})",
                        fix="Sample more (--num-samples), raise --temperature, or use another builder.")
    write_jsonl(Path(args.out), pairs)
    atomic_write_json(Path(args.out).with_suffix(".stats.json"), {"builder": args.builder, "data": args.data, **stats})
    print(f"wrote {len(pairs)} pairs to {args.out} ({stats})")
    return 0


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write rows atomically (temp + rename)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _origin(record: dict, i: int) -> dict:
    """Where the prompt came from: the source record's id/source (or its position)."""
    return {"record": record.get("id", i), "record_source": record.get("source")}


# --- (a) verifier-scored on-policy pairs ------------------------------------------------------------------

def pair_by_score(samples: list[str], scores: list[float], k: int, rng: random.Random) -> list[tuple[int, int]]:
    """Up to k (chosen, rejected) index pairs with score[chosen] = best > score[rejected]; distinct texts,
    each sample used at most once."""
    best = max(scores)
    good = list(dict.fromkeys(i for i, s in enumerate(scores) if s == best))
    bad = [i for i, s in enumerate(scores) if s < best]
    good = list({samples[i].strip(): i for i in good}.values())
    bad = list({samples[i].strip(): i for i in bad}.values())
    rng.shuffle(good)
    rng.shuffle(bad)
    return list(zip(good, bad))[:k]


def onpolicy_pairs(records: list[dict], args) -> tuple[list[dict], dict]:
    from polm.generate import load_for_inference
    from polm.rollout import SamplingConfig, build_generator
    from polm.rollout.text import generate_text
    from polm.verify import score_response

    model, tokenizer = load_for_inference(args.model)
    generator = build_generator("hf", model, tokenizer, prompts_per_batch=args.batch_size)
    sampling = SamplingConfig(n=args.num_samples, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    samples = generate_text(generator, tokenizer, [r["prompt"] for r in records], sampling, seed=args.seed,
                            progress=True)
    rng, pairs = random.Random(args.seed), []
    stats = {"prompts": len(records), "all_correct": 0, "none_correct": 0, "best_below_min_chosen_score": 0,
             "samples": args.num_samples, "min_chosen_score": args.min_chosen_score}
    for i, (record, texts) in enumerate(zip(records, samples)):
        scores = [score_response(t, record) for t in texts]
        if max(scores) == min(scores):
            stats["all_correct" if max(scores) > 0 else "none_correct"] += 1
            continue
        if max(scores) < args.min_chosen_score:
            stats["best_below_min_chosen_score"] += 1
            continue
        for c, r in pair_by_score(texts, scores, args.pairs_per_prompt, rng):
            pairs.append({"prompt": record["prompt"], "chosen": texts[c], "rejected": texts[r],
                          "builder": "onpolicy", "model": args.model, "data": args.data, **_origin(record, i),
                          "chosen_score": scores[c], "rejected_score": scores[r], "correct_samples": scores.count(1.0),
                          "temperature": args.temperature, "seed": args.seed, "answer": record.get("answer")})
    stats["pairs"] = len(pairs)
    return pairs, stats


# --- (b) from references ----------------------------------------------------------------------------------

def wrong_final_number(text: str, rng: random.Random) -> str | None:
    """The text with its LAST number changed by a nonzero offset (same sign convention), or None if it has none."""
    matches = list(NUMBER.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    value = float(last.group())
    offset = rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])
    new = value + offset
    shown = str(int(new)) if "." not in last.group() else f"{new:.{len(last.group().split('.')[1])}f}"
    return text[:last.start()] + shown + text[last.end():]


def truncated_reasoning(text: str) -> str | None:
    """The first half of the reasoning lines, without the final answer line; None for a one-line answer."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    return "\n".join(lines[:max(1, (len(lines) - 1) // 2)])


def reference_pairs(records: list[dict], args) -> tuple[list[dict], dict]:
    kinds = [k.strip() for k in args.perturb.split(",") if k.strip()]
    known = {"wrong-number", "truncate"}
    if not kinds or set(kinds) - known:
        raise PolmError(f"--perturb '{args.perturb}' names unknown perturbations",
                        fix="Use a comma list of: wrong-number, truncate.")
    rng, pairs, skipped = random.Random(args.seed), [], 0
    for i, record in enumerate(records):
        kind = kinds[i % len(kinds)]
        chosen = record["completion"]
        rejected = wrong_final_number(chosen, rng) if kind == "wrong-number" else truncated_reasoning(chosen)
        if rejected is None and kind == "truncate":     # a one-line answer cannot be cut: change its number
            kind, rejected = "wrong-number", wrong_final_number(chosen, rng)
        if rejected is None or rejected.strip() == chosen.strip():
            skipped += 1
            continue
        pairs.append({"prompt": record["prompt"], "chosen": chosen, "rejected": rejected, "builder": "references",
                      "perturbation": kind, "data": args.data, "seed": args.seed, **_origin(record, i)})
    return pairs, {"prompts": len(records), "pairs": len(pairs), "skipped_no_number": skipped}


# --- (c) AI feedback ------------------------------------------------------------------------------------

def agreed_winner(first_order: str, second_order: str) -> int | None:
    """0 or 1 when both orders pick the same sample (order 1 shows (s0, s1), order 2 shows (s1, s0)), else None."""
    if first_order == "A" and second_order == "B":
        return 0
    if first_order == "B" and second_order == "A":
        return 1
    return None


def judged_pairs(records: list[dict], args) -> tuple[list[dict], dict]:
    from polm.eval.judge import DEFAULT_RUBRIC, judge_verdicts
    from polm.eval.model import ModelAdapter
    from polm.generate import load_for_inference
    from polm.rollout import SamplingConfig, build_generator
    from polm.rollout.text import generate_text

    model, tokenizer = load_for_inference(args.model)
    generator = build_generator("hf", model, tokenizer, prompts_per_batch=args.batch_size)
    sampling = SamplingConfig(n=2, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    samples = generate_text(generator, tokenizer, [r["prompt"] for r in records], sampling, seed=args.seed,
                            progress=True)
    del model, generator
    kept = [(i, r, s) for i, (r, s) in enumerate(zip(records, samples)) if s[0].strip() != s[1].strip()]
    judge = ModelAdapter.load(args.judge)
    prompts = [r["prompt"] for _, r, _ in kept]
    forward = judge_verdicts(judge, prompts, [s[0] for _, _, s in kept], [s[1] for _, _, s in kept], DEFAULT_RUBRIC)
    backward = judge_verdicts(judge, prompts, [s[1] for _, _, s in kept], [s[0] for _, _, s in kept], DEFAULT_RUBRIC)
    pairs = []
    for (i, record, texts), v1, v2 in zip(kept, forward, backward):
        win = agreed_winner(v1, v2)
        if win is None:
            continue
        pairs.append({"prompt": record["prompt"], "chosen": texts[win], "rejected": texts[1 - win], "builder": "judge",
                      "model": args.model, "judge": args.judge, "verdicts": [v1, v2], "data": args.data,
                      "temperature": args.temperature, "seed": args.seed, **_origin(record, i)})
    return pairs, {"prompts": len(records), "identical_samples": len(records) - len(kept),
                   "dropped_tie_or_disagree": len(kept) - len(pairs), "pairs": len(pairs)}
