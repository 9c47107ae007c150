"""polm DPO vs TRL `DPOTrainer` on the embedded SmolLM2-135M-Instruct with LoRA (r16, alpha32, all 7 projections).

    python bench/dpo_vs_trl.py --quick --threads 1   # 3 steps of 4 pairs, one round (~1.5 min on 2 busy CPU cores)
    python bench/dpo_vs_trl.py                       # the recorded run (docs/performance.md)
    python bench/dpo_vs_trl.py --device cuda
    python bench/dpo_vs_trl.py --sides polm-precompute,polm-onthefly,trl,trl-precompute

Goal: with `reference.mode=precompute`, polm's optimizer step takes <= 0.6x TRL's step time (TRL with
its defaults: the reference is the base with adapters disabled, one extra forward per step) and its
peak memory is no larger than TRL's, with the same losses.

Sides, each a fresh process per trial (its peak RSS is that trial's memory), alternated after a warm-up:
  polm-precompute  reference log-probs computed once before training (`build_reference`, adapters
                   disabled), so a step runs no reference forward; the pass's own time is reported
                   apart, and amortised over the run (precompute seconds / steps)
  polm-onthefly    `reference.mode=adapter`: every step also runs the base with adapters disabled
  trl              `DPOTrainer` with its defaults (no precompute; `padding_free` is unavailable in TRL
                   1.16 and falls back to padding), except those set for identical work below
  trl-precompute   (opt-in) TRL with `precompute_ref_log_probs=True`

Both sides get the SAME pairs, built without sampling a model: reasoning-gym arithmetic prompts, chosen =
the worked reference answer, rejected = the same answer with a wrong final number (polm's `references`
builder, `polm data preferences references --perturb wrong-number`). The records go to both as chat
(prompt = one user turn, chosen / rejected = one assistant turn) and each side applies SmolLM2's chat
template itself; the script checks that the token ids agree and reports which target tokens differ.
Same LoRA, AdamW, lr, cosine schedule, clipping, beta = 0.1, batch, max length, steps, seed and data
order (no shuffling), fp32 on CPU (bf16 autocast on CUDA), no gradient checkpointing on either side.
polm runs its DPO recipe's own pieces (`prepare_data`, `make_collate`, `build_reference`, `make_step`,
the shared loop); TRL runs `DPOTrainer.train()`.

Reported per side: median wall and CPU seconds per optimizer step over steps 2..N (step 1 pays one-off
allocation), peak memory, the first-step loss (with LoRA's B = 0 the policy IS the reference at step 1,
so every side must give log 2) and the step-1 policy log-probs of chosen / rejected, which do depend on
each side's tokenization. Writes bench/results/dpo_vs_trl.json (_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import common

SCRIPT = Path(__file__).resolve()
MODEL = "smollm2-135m-instruct"
DATA = "builtin:reasoning-gym/basic_arithmetic?seed=11&min_terms=2&max_terms=2"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SIDES = ("polm-precompute", "polm-onthefly", "trl")
KNOWN_SIDES = (*SIDES, "trl-precompute")


@dataclass
class Settings:
    """Everything the sides share; the JSON records it as is."""
    steps: int = 10                  # optimizer steps per trial; step time is the median over steps 2..N
    micro_batch_size: int = 8        # pairs per forward (configs/dpo.yaml)
    grad_accum: int = 1
    max_length: int = 512            # per sequence (prompt + completion); no pair here comes near it
    lr: float = 5e-5
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    schedule: str = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    beta: float = 0.1
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_targets: list = field(default_factory=lambda: list(TARGETS))
    seed: int = 0
    loss_chunk_size: int = 1024      # polm's chunked log-probs (its DPO default)
    ref_batch_size: int = 8          # sequences per forward in polm's precompute pass (its default)
    repeats: int = 3
    warmup: bool = True              # one short warm-up trial per side before the measured rounds
    warmup_steps_per_trial: int = 1  # a warm-up only brings code and weights into the page cache

    @property
    def pairs_needed(self) -> int:
        return self.steps * self.grad_accum * self.micro_batch_size


QUICK = {"steps": 3, "micro_batch_size": 4, "repeats": 1, "warmup": False}


# --- data (parent process) ---------------------------------------------------------------------------

def build_pairs(settings: Settings) -> list[dict]:
    """prompt / chosen / rejected records from polm's `references` builder (wrong final number), in order."""
    from polm.data.builtin import load_builtin
    from polm.data.cli import reference_pairs

    need = settings.pairs_needed
    records = load_builtin(f"{DATA}&n={need + 8}")   # a few spare in case a record has no number to change
    pairs, _ = reference_pairs(records, SimpleNamespace(perturb="wrong-number", seed=settings.seed, data=DATA))
    if len(pairs) < need:
        raise RuntimeError(f"only {len(pairs)} pairs from {len(records)} records; {need} needed")
    return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs[:need]]


def encode_for_report(pairs: list[dict], tokenizer, settings: Settings) -> list[dict]:
    """polm's encoding of every pair (what polm trains on), for per-step token counts and the TRL check."""
    from polm.data.preferences import encode_pairs, validate_pair

    encoded, stats = encode_pairs([validate_pair(p, f"pair {i}") for i, p in enumerate(pairs)], tokenizer,
                                  max_length=settings.max_length, chat=True)
    if len(encoded) != len(pairs) or stats.truncated:
        raise RuntimeError(f"polm's encoding dropped or cut pairs ({stats.summary()}); raise max_length")
    return [{key: {"input_ids": ex[key]["input_ids"], "labels": ex[key]["labels"]} for key in ("chosen", "rejected")}
            for ex in encoded]


def per_step_tokens(encoded: list[dict], settings: Settings) -> list[dict]:
    """Non-pad input tokens, completion target tokens and Σ len² (attention FLOPs) of every optimizer step."""
    per = settings.micro_batch_size * settings.grad_accum
    out = []
    for s in range(settings.steps):
        seqs = [ex[key] for ex in encoded[s * per:(s + 1) * per] for key in ("chosen", "rejected")]
        out.append({"tokens": sum(len(q["input_ids"]) for q in seqs),
                    "targets": sum(label != -100 for q in seqs for label in q["labels"][1:]),
                    "len_sq": sum(len(q["input_ids"]) ** 2 for q in seqs)})
    return out


# --- workers (one fresh process per trial) -----------------------------------------------------------

def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _polm_config(spec: dict, s: Settings, run_dir: str):
    """The DPO recipe's config for this trial, built from dotted overrides as `polm dpo` would."""
    from polm.config import load_config
    from polm.recipes.dpo import DPOConfig

    mode = "precompute" if spec["side"] == "polm-precompute" else "adapter"
    return load_config(DPOConfig, None, [
        f"output_dir={run_dir}", "overwrite=true", "loss=dpo", f"beta={s.beta}", "method=lora",
        f"model.name={spec['model_dir']}", f"model.device={spec['device']}", "model.dtype=fp32",
        f"lora.r={s.lora_r}", f"lora.alpha={s.lora_alpha}", "lora.dropout=0.0",
        f"lora.target_modules=[{','.join(s.lora_targets)}]",
        f"data.train={spec['pairs_path']}", "data.eval_fraction=0.0", f"data.max_length={s.max_length}",
        "data.packing=true", "data.chat=true",
        f"reference.mode={mode}", f"reference.cache_dir={run_dir}/ref-cache",   # a fresh cache: the pass is timed
        f"reference.batch_size={s.ref_batch_size}", f"loss_chunk_size={s.loss_chunk_size}",
        f"train.max_steps={spec['steps']}", f"train.micro_batch_size={s.micro_batch_size}",
        f"train.grad_accum={s.grad_accum}", f"train.lr={s.lr}", f"train.weight_decay={s.weight_decay}",
        f"train.adam_betas=[{s.adam_betas[0]},{s.adam_betas[1]}]", f"train.adam_eps={s.adam_eps}",
        f"train.schedule={s.schedule}", f"train.warmup_steps={s.warmup_steps}",
        f"train.max_grad_norm={s.max_grad_norm}", f"train.precision={common.precision_for(spec['device'])}",
        f"train.seed={s.seed}", "train.log_every=1", "train.progress=false", "train.tensorboard=false",
        "train.resume=false"])


def run_polm(spec: dict) -> dict:
    """polm's DPO recipe pieces, as `run_dpo` wires them, minus the run directory's final save and plots.

    The one difference from `run_dpo`: the batch order is not shuffled, so that TRL's sequential sampler
    sees the same pairs in the same micro-batches.
    """
    import torch

    from polm.losses import PREFERENCE_LOSSES
    from polm.models import attach_adapter, load_model, load_tokenizer
    from polm.recipes.dpo import build_reference, loss_kwargs, make_collate, make_step, prepare_data
    from polm.train.batches import BatchStream
    from polm.train.loop import train
    from polm.train.metrics import read_metrics

    s, device = Settings(**spec["settings"]), spec["device"]
    with tempfile.TemporaryDirectory(prefix="polm-bench-dpo-") as run_dir:
        cfg = _polm_config(spec, s, run_dir)
        loss_fn = PREFERENCE_LOSSES.get(cfg.loss)
        kwargs = loss_kwargs(cfg, loss_fn)
        tokenizer = load_tokenizer(cfg.model.name)
        train_ex, _, _ = prepare_data(cfg, tokenizer, unpaired=False)
        model = load_model(cfg.model)
        torch.manual_seed(s.seed)  # the LoRA A matrices are drawn here, as TRL draws them after set_seed(seed)
        model = attach_adapter(model, cfg.lora, gradient_checkpointing=cfg.model.gradient_checkpointing)
        collate = make_collate(cfg, tokenizer, unpaired=False)

        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        reference, ref_info = build_reference(cfg, model, tokenizer, train_ex, collate)
        _sync(device)
        precompute = {"precompute_s": time.perf_counter() - wall, "precompute_cpu_s": time.process_time() - cpu}

        seen: list[dict] = []

        def observed_loss(lp, **kw):   # the recipe's loss, noting the policy log-probs it is given
            seen.append({"chosen": float(lp.chosen.detach().mean()), "rejected": float(lp.rejected.detach().mean())})
            return loss_fn(lp, **kw)

        step = make_step(model, observed_loss, kwargs, reference, False, cfg.loss_chunk_size or None)
        clock, calls = common.StepClock(), [0]

        def timed_step(batch: dict):
            if calls[0] % s.grad_accum == 0:  # the first micro-batch of an optimizer step
                clock.mark()
            calls[0] += 1
            return step(batch)

        batches = BatchStream(train_ex, collate, cfg.train.micro_batch_size, seed=cfg.train.seed, shuffle=False)
        rss_start = common.peak_rss_mib()
        train(model=model, step_fn=timed_step, batches=batches, cfg=cfg.train, run_dir=Path(run_dir))
        _sync(device)
        clock.finish()
        records = [r for r in read_metrics(Path(run_dir)) if "loss" in r]
    per_step = [seen[i * s.grad_accum:(i + 1) * s.grad_accum] for i in range(len(records))]
    return {"losses": [r["loss"] for r in records], "grad_norms": [r["grad_norm"] for r in records],
            "tokens": [r["tokens"] for r in records], "targets": [r["target_tokens"] for r in records],
            "logps_chosen": [sum(m["chosen"] for m in st) / len(st) for st in per_step],
            "logps_rejected": [sum(m["rejected"] for m in st) / len(st) for st in per_step],
            "reference": {k: v for k, v in ref_info.items() if k != "cache_key"}, **precompute,
            "rss_at_train_start_mib": rss_start, "cuda_peak_mib": common.cuda_peak_mib(device), **clock.as_dict(),
            **common.param_counts(model)}


def trl_options(s: Settings, precompute: bool) -> dict:
    """The DPOConfig options this bench sets beyond the shared hyperparameters (recorded in the JSON)."""
    return {"precompute_ref_log_probs": precompute, "precompute_ref_batch_size": None, "padding_free": False,
            "gradient_checkpointing": False, "use_liger_kernel": False, "loss_type": ["sigmoid"],
            "disable_dropout": True, "max_length": s.max_length, "truncation_mode": "keep_start",
            "pad_to_multiple_of": "auto (no padding to a multiple on CPU/CUDA)",
            "train_sampling_strategy": "sequential"}


def _trl_args(spec: dict, s: Settings, out_dir: str):
    from trl import DPOConfig

    device = spec["device"]
    return DPOConfig(
        output_dir=out_dir, max_steps=spec["steps"], per_device_train_batch_size=s.micro_batch_size,
        gradient_accumulation_steps=s.grad_accum, learning_rate=s.lr, weight_decay=s.weight_decay,
        adam_beta1=s.adam_betas[0], adam_beta2=s.adam_betas[1], adam_epsilon=s.adam_eps,
        lr_scheduler_type=s.schedule, warmup_steps=s.warmup_steps, max_grad_norm=s.max_grad_norm, beta=s.beta,
        bf16=common.precision_for(device) == "bf16", use_cpu=not device.startswith("cuda"),
        # DPOConfig turns gradient checkpointing on by default; polm's default is off, and both must do the same work
        gradient_checkpointing=False, max_length=s.max_length,
        precompute_ref_log_probs=spec["side"] == "trl-precompute",
        train_sampling_strategy="sequential", seed=s.seed, data_seed=s.seed, logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )


def run_trl(spec: dict) -> dict:
    """TRL DPOTrainer on the same pairs as chat (prompt: a user turn; chosen/rejected: an assistant turn)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOTrainer

    s, device = Settings(**spec["settings"]), spec["device"]
    pairs = [json.loads(line) for line in Path(spec["pairs_path"]).read_text().splitlines()]
    rows = [{"prompt": [{"role": "user", "content": p["prompt"]}],
             "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).to(device)
    peft_config = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=0.0, bias="none",
                             target_modules=list(s.lora_targets), task_type="CAUSAL_LM")

    clock, rss_start, precompute = common.StepClock(), [0.0], {"precompute_s": 0.0, "precompute_cpu_s": 0.0}

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            rss_start[0] = common.peak_rss_mib()

        def on_step_begin(self, *args, **kwargs):
            clock.mark()

        def on_train_end(self, *args, **kwargs):
            _sync(device)
            clock.finish()

    original = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *args, **kwargs):   # TRL runs the pass inside DPOTrainer(...): time that call alone
        _sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        out = original(self, *args, **kwargs)
        _sync(device)
        precompute["precompute_s"] += time.perf_counter() - wall
        precompute["precompute_cpu_s"] += time.process_time() - cpu
        return out

    DPOTrainer._precompute_ref_logps = timed_precompute
    with tempfile.TemporaryDirectory(prefix="polm-bench-trl-") as out_dir:
        trainer = DPOTrainer(model=model, args=_trl_args(spec, s, out_dir), train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config, callbacks=[Clock()])
        tokenization = compare_tokenization(spec, trainer.train_dataset, tokenizer)
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    return {"losses": [h["loss"] for h in logs], "grad_norms": [h["grad_norm"] for h in logs],
            "logps_chosen": [h["logps/chosen"] for h in logs], "logps_rejected": [h["logps/rejected"] for h in logs],
            **precompute, "tokenization": tokenization, "rss_at_train_start_mib": rss_start[0],
            "cuda_peak_mib": common.cuda_peak_mib(device), "optimizer": str(trainer.args.optim.value), **clock.as_dict(),
            **common.param_counts(trainer.model)}


def compare_tokenization(spec: dict, dataset, tokenizer) -> dict:
    """TRL's ids (prompt_ids + chosen/rejected_ids) and targets (the completion part) against polm's encoding."""
    ours = json.loads(Path(spec["encoded_path"]).read_text())
    ids_equal, targets_equal, trl_only, polm_only = 0, 0, [], []
    for a, row in zip(ours, dataset):
        for key in ("chosen", "rejected"):
            ids = row["prompt_ids"] + row[f"{key}_ids"]
            theirs = [-100] * len(row["prompt_ids"]) + row[f"{key}_ids"]
            ids_equal += ids == a[key]["input_ids"]
            targets_equal += theirs == a[key]["labels"]
            for t, x, y in zip(ids, a[key]["labels"], theirs):
                if x == -100 != y:
                    trl_only.append(t)
                elif y == -100 != x:
                    polm_only.append(t)
            trl_only += ids[len(a[key]["input_ids"]):]   # tokens TRL has beyond polm's sequence
    return {"sequences": 2 * min(len(ours), len(dataset)), "ids_identical": ids_equal,
            "targets_identical": targets_equal, "trl_only_targets": len(trl_only),
            "trl_only_tokens": sorted({tokenizer.decode([t]) for t in trl_only}),
            "polm_only_targets": len(polm_only), "polm_only_tokens": sorted({tokenizer.decode([t]) for t in polm_only})}


def worker_main(spec_path: str, result_path: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    spec = json.loads(Path(spec_path).read_text())
    common.set_threads(spec.get("threads"))
    result = {"side": spec["side"]}
    result.update(run_polm(spec) if spec["side"].startswith("polm") else run_trl(spec))
    common.write_worker_result(result_path, result)


# --- summary (parent) --------------------------------------------------------------------------------

def useful_flops(trial: dict, steps: list[dict]) -> float:
    """The policy's training FLOPs over steps 2..N: (4·frozen + 6·trainable)·tokens + 6·L·d·Σ len².

    The same numerator for every side: the reference forward is not counted (it is the work that
    precompute removes), nor TRL's pad tokens. Attention: QKᵀ and AV over the causal half, ×3 with backward.
    """
    per_token = 4 * (trial["params"] - trial["trainable"]) + 6 * trial["trainable"]
    return sum(per_token * st["tokens"] + 6 * trial["layers"] * trial["hidden"] * st["len_sq"] for st in steps[1:])


def summarize_side(trials: list[dict], steps: list[dict], peak: dict, device: str) -> dict:
    """Medians over trials of: wall and CPU seconds per step (steps 2..N), MFU, peak memory, RSS when
    training started, and the precompute pass (0 where a side has none) with its per-step share."""
    cuda, n = device.startswith("cuda"), len(steps)
    flops = useful_flops(trials[0], steps)
    per_trial = []
    for t in trials:
        wall, cpu = sum(t["step_wall_s"][1:]), sum(t["step_cpu_s"][1:])
        step_s = common.median(t["step_wall_s"][1:])
        per_trial.append({
            "step_s": step_s, "step_cpu_s": common.median(t["step_cpu_s"][1:]),
            "mfu": flops / wall / peak["flops_per_s"] if cuda else flops / cpu / peak["flops_per_cpu_s"],
            "memory_mib": t["cuda_peak_mib"] if cuda else t["peak_rss_mib"],
            "rss_at_train_start_mib": t["rss_at_train_start_mib"],
            "precompute_s": t["precompute_s"], "precompute_per_step_s": t["precompute_s"] / n,
            "step_s_with_precompute": step_s + t["precompute_s"] / n})
    return {key: common.median([p[key] for p in per_trial]) for key in per_trial[0]} | {"trials": per_trial}


def check_same_work(rounds: dict[str, list[dict]], base: str = "trl") -> dict:
    """Per side, against TRL: first-step loss (log 2 on every side) and its difference, step-1 policy
    log-probs of chosen / rejected, and the largest relative loss difference over the run."""
    ref = rounds[base][0]
    out = {"log2": math.log(2)}
    for side, trials in rounds.items():
        t = trials[0]
        diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(t["losses"], ref["losses"])]
        out[side] = {"first_loss": t["losses"][0], "first_loss_diff_vs_trl": t["losses"][0] - ref["losses"][0],
                     "first_logps_chosen": t["logps_chosen"][0], "first_logps_rejected": t["logps_rejected"][0],
                     "first_logps_chosen_diff_vs_trl": t["logps_chosen"][0] - ref["logps_chosen"][0],
                     "first_logps_rejected_diff_vs_trl": t["logps_rejected"][0] - ref["logps_rejected"][0],
                     "loss_rel_diff_max_vs_trl": max(diffs), "losses": t["losses"], "grad_norms": t["grad_norms"]}
    return out


def run_sides(settings: Settings, sides: list[str], base: dict) -> tuple[dict, dict]:
    """Warm up each side once (if asked), then alternate measured trials: ({side: [trial]}, {side: warm-up})."""
    spec = {**base, "steps": settings.steps}
    run = common.run_worker
    trials = {side: (lambda side=side: run(SCRIPT, {**spec, "side": side})) for side in sides}
    warm = {**spec, "steps": settings.warmup_steps_per_trial}
    warmups = {side: (lambda side=side: run(SCRIPT, {**warm, "side": side})) for side in sides}
    return common.alternate(trials, settings.repeats, warmups if settings.warmup else None,
                            log=lambda m: print(f"  {m}", flush=True))


def summarize(rounds: dict, steps: list[dict], peak: dict, device: str) -> dict:
    sides = {side: summarize_side(trials, steps, peak, device) for side, trials in rounds.items()}
    trl = sides["trl"]
    ratios = {}
    for side, r in sides.items():
        if side == "trl":
            continue
        ratios[side] = {"step_time": r["step_s"] / trl["step_s"], "step_cpu_time": r["step_cpu_s"] / trl["step_cpu_s"],
                        "step_time_with_precompute": r["step_s_with_precompute"] / trl["step_s_with_precompute"],
                        "memory": r["memory_mib"] / trl["memory_mib"]}
    first_polm = next(t[0] for s, t in rounds.items() if s.startswith("polm"))
    return {"sides": sides, "ratios_vs_trl": ratios, "same_work": check_same_work(rounds),
            "tokenization_check": rounds["trl"][0]["tokenization"], "trl_optimizer": rounds["trl"][0]["optimizer"],
            "params": first_polm["params"],
            "trainable": {side: t[0]["trainable"] for side, t in rounds.items()},
            "polm_reference": {side: t[0]["reference"] for side, t in rounds.items() if side.startswith("polm")},
            "polm_tokens_per_step": first_polm["tokens"], "polm_targets_per_step": first_polm["targets"]}


def print_table(results: dict, device: str) -> None:
    sides = list(results["sides"])
    others = [s for s in sides if s != "trl"]
    mem = "peak CUDA MiB" if device.startswith("cuda") else "peak RSS MiB"
    figures = [("step time s (median, steps 2..N)", "step_s"), ("step CPU s", "step_cpu_s"),
               ("precompute pass s", "precompute_s"), ("precompute s per step", "precompute_per_step_s"),
               ("step + precompute share s", "step_s_with_precompute"), (mem, "memory_mib"),
               ("RSS at train start MiB", "rss_at_train_start_mib"), ("MFU (policy work)", "mfu")]
    rows = []
    for label, key in figures:
        values = [results["sides"][s][key] for s in sides]
        trl = results["sides"]["trl"][key]
        rows.append([label, *values, *[results["sides"][s][key] / trl if trl else "-" for s in others]])
    work = results["same_work"]
    rows.append(["first-step loss", *[work[s]["first_loss"] for s in sides],
                 *[work[s]["first_loss"] / work["trl"]["first_loss"] for s in others]])
    rows.append(["step-1 logps chosen", *[work[s]["first_logps_chosen"] for s in sides],
                 *[work[s]["first_logps_chosen"] / work["trl"]["first_logps_chosen"] for s in others]])
    print(common.format_table(["figure", *sides, *[f"{s}/trl" for s in others]], rows))
    for side in others:
        w, r = work[side], results["ratios_vs_trl"][side]
        print(f"{side}: first-step loss {w['first_loss']:.6f} vs TRL {work['trl']['first_loss']:.6f} "
              f"(diff {w['first_loss_diff_vs_trl']:+.1e}); step-1 logps diff chosen "
              f"{w['first_logps_chosen_diff_vs_trl']:+.3f} rejected {w['first_logps_rejected_diff_vs_trl']:+.3f}; "
              f"loss rel. diff max {w['loss_rel_diff_max_vs_trl']:.1e}; step time x{r['step_time']:.2f} of TRL "
              f"(x{r['step_time_with_precompute']:.2f} with the precompute share), memory x{r['memory']:.2f}")
    tok = results["tokenization_check"]
    print(f"tokenization: {tok['ids_identical']}/{tok['sequences']} sequences with identical ids, "
          f"{tok['targets_identical']} with identical targets; TRL-only targets {tok['trl_only_targets']} "
          f"{tok['trl_only_tokens']}, polm-only {tok['polm_only_targets']} {tok['polm_only_tokens']}")


def goals(results: dict) -> dict:
    """Goal: precompute step <= 0.6x TRL's step time, no more memory than TRL, the same first-step loss."""
    if "polm-precompute" not in results["ratios_vs_trl"]:
        return {}
    r, w = results["ratios_vs_trl"]["polm-precompute"], results["same_work"]["polm-precompute"]
    return {"step_time_le_0.6x": r["step_time"] <= 0.6, "memory_le_1.0x": r["memory"] <= 1.0,
            "same_first_loss": abs(w["first_loss_diff_vs_trl"]) < 1e-4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="3 steps of 4 pairs, one round, no warm-up")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help=f"comma-separated, trl and at least one polm side: {', '.join(KNOWN_SIDES)}")
    parser.add_argument("--steps", type=int, help="optimizer steps per trial")
    parser.add_argument("--repeats", type=int, help="measured rounds per side")
    parser.add_argument("--threads", type=int, help="torch intra-op threads per worker (default: one per core); "
                        "1 avoids OpenMP stalls when other processes oversubscribe the cores")
    parser.add_argument("--out", type=Path, help="default: bench/results/dpo_vs_trl.json (_quick.json with --quick)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if "trl" not in sides or not any(s.startswith("polm") for s in sides) or set(sides) - set(KNOWN_SIDES):
        parser.error(f"--sides must include trl and a polm side, and name only: {', '.join(KNOWN_SIDES)}")
    args.sides = sides
    return args


def run_benchmark(args: argparse.Namespace, settings: Settings) -> dict:
    """Build and encode the pairs once, time the matmul peak, run every side; the report that goes to JSON."""
    from polm.assets import resolve_model
    from polm.models import load_tokenizer

    model_dir = resolve_model(MODEL)
    pairs = build_pairs(settings)
    encoded = encode_for_report(pairs, load_tokenizer(model_dir), settings)
    steps = per_step_tokens(encoded, settings)
    common.set_threads(args.threads)  # the matmul peak is measured with the workers' thread count
    machine = common.machine_description(args.device, ("torch", "transformers", "peft", "trl", "accelerate"))
    peak = common.matmul_peak_flops(args.device)
    lengths = sorted(len(ex[k]["input_ids"]) for ex in encoded for k in ("chosen", "rejected"))
    print(f"{machine['cpu']} ({machine['cores']} cores, {machine['torch_threads']} torch threads), matmul peak "
          f"{peak['flops_per_s'] / 1e9:.1f} GFLOP/s; {len(pairs)} pairs, sequences of {lengths[0]}-{lengths[-1]} "
          f"tokens; sides {', '.join(args.sides)}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="polm-bench-data-") as tmp:
        pairs_path, encoded_path = Path(tmp) / "pairs.jsonl", Path(tmp) / "encoded.json"
        pairs_path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        encoded_path.write_text(json.dumps(encoded))
        base = {"model_dir": model_dir, "device": args.device, "settings": asdict(settings), "threads": args.threads,
                "pairs_path": str(pairs_path), "encoded_path": str(encoded_path)}
        rounds, _ = run_sides(settings, args.sides, base)
    results = summarize(rounds, steps, peak, args.device)
    return {
        "benchmark": "dpo_vs_trl", "command": " ".join(["python", "bench/dpo_vs_trl.py", *sys.argv[1:]]),
        "quick": args.quick, "device": args.device, "machine": machine,
        "matmul_peak": {"start": peak, "end": common.matmul_peak_flops(args.device)}, "settings": asdict(settings),
        "trl_options": {side: trl_options(settings, side == "trl-precompute") for side in args.sides
                        if side.startswith("trl")},
        "trl_notes": {"padding_free": "TRL 1.16 DPOTrainer: 'temporarily unavailable', True warns and pads",
                      "gradient_checkpointing": "DPOConfig default True; off here, as polm's default",
                      "bf16": "DPOConfig default True; set from --device (fp32 on CPU, as polm)",
                      "fused_lm_head": "always on in TRL 1.16 (chunked log-probs)"},
        "data": {"source": DATA, "builder": "polm data preferences references --perturb wrong-number",
                 "pairs": len(pairs), "example": pairs[0], "sequence_length_min": lengths[0],
                 "sequence_length_median": lengths[len(lengths) // 2], "sequence_length_max": lengths[-1],
                 "tokens_per_step": [s["tokens"] for s in steps], "targets_per_step": [s["targets"] for s in steps]},
        "results": results, "goals": goals(results),
        "wall_s": round(time.perf_counter() - started, 1), "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.result)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = replace(Settings(), **(QUICK if args.quick else {}))
    settings = replace(settings, **{k: v for k, v in (("steps", args.steps), ("repeats", args.repeats)) if v})
    if settings.steps < 2:
        raise SystemExit("--steps must be at least 2 (step 1 is not timed)")
    out = args.out or common.RESULTS_DIR / ("dpo_vs_trl_quick.json" if args.quick else "dpo_vs_trl.json")
    report = run_benchmark(args, settings)
    print_table(report["results"], args.device)
    print("goals: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in report["goals"].items()))
    common.write_json_atomic(out, report)
    print(f"wrote {out} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
