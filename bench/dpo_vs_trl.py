"""polm DPO vs TRL `DPOTrainer` on the embedded SmolLM2-135M-Instruct with LoRA (r16, alpha32, all 7 projections).

    python bench/dpo_vs_trl.py --quick --threads 1   # 3 steps of 4 pairs, one round, no warm-up (a smoke run)
    python bench/dpo_vs_trl.py                       # the recorded run: both pairs, warm-up + 3 rounds
    python bench/dpo_vs_trl.py --device cuda
    python bench/dpo_vs_trl.py --pairs precompute    # one like-for-like pair only

Compared like for like, two pairs (the headline is one ratio per pair, never precompute vs on-the-fly):
  precompute  polm `reference.mode=precompute` (`build_reference`: reference log-probs computed once,
              adapters disabled, before training)  vs  TRL `precompute_ref_log_probs=True` (its pass runs
              inside `DPOTrainer(...)`; the parameter hash it takes for the pass's cache key is timed with it).
              Headline: step time WITH the pass amortised, step_s + precompute_s / steps, on both sides.
  onthefly    polm `reference.mode=adapter` (every step also runs the base with adapters disabled)  vs
              TRL's default (no precompute). Headline: step time.
Sides: polm-precompute, trl-precompute, polm-onthefly, trl; each trial a fresh process (its peak RSS is that
trial's memory); one short warm-up trial per side, then rounds in alternating order (A B C D, D C B A, ...).

Goal (docs/performance.md): polm no slower than TRL in either pair (ratio <= 1.0, the precompute pass
counted), no more peak memory, and the same first-step loss.

Both sides get the SAME pairs, built without sampling a model: reasoning-gym arithmetic prompts, chosen =
the worked reference answer, rejected = the same answer with a wrong final number (polm's `references`
builder, `polm data preferences references --perturb wrong-number`). The records go to both as chat
(prompt = one user turn, chosen / rejected = one assistant turn) and each side applies SmolLM2's chat
template itself; the script checks that the token ids agree and reports which target tokens differ.
Same LoRA, AdamW, lr, cosine schedule, clipping, beta = 0.1, batch, max length, steps, seed and data
order (no shuffling), fp32 on CPU (bf16 autocast on CUDA), no gradient checkpointing on either side, and
the same number of sequences per forward in the precompute pass (TRL's `precompute_ref_batch_size`, in
pairs, is set to polm's `reference.batch_size` / 2). `padding_free` is unavailable in TRL 1.16 (falls back
to padding). polm runs its DPO recipe's own pieces (`prepare_data`, `make_collate`, `build_reference`,
`make_step`, the shared loop); TRL runs `DPOTrainer.train()`.

Reported per side: median (min-max over rounds) wall and CPU seconds per optimizer step over steps 2..N
(step 1 pays one-off allocation), the precompute pass and its per-step share, peak memory, the first-step
loss (with LoRA's B = 0 the policy IS the reference at step 1, so every side must give log 2) and the
step-1 policy log-probs of chosen / rejected, which do depend on each side's tokenization. The JSON
records the command, machine, load average at start and end, versions and every TRL option set.
Writes bench/results/dpo_vs_trl.json (_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import common

SCRIPT = Path(__file__).resolve()
MODEL = "smollm2-135m-instruct"
DATA = "builtin:reasoning-gym/basic_arithmetic?seed=11&min_terms=2&max_terms=2"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# pair -> (polm side, TRL side doing the same work); the headline is one ratio per pair
PAIRS = {"precompute": ("polm-precompute", "trl-precompute"), "onthefly": ("polm-onthefly", "trl")}


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
    ref_batch_size: int = 8          # sequences per forward in the precompute pass (polm's default; TRL: /2 pairs)
    repeats: int = 3
    warmup: bool = True              # one short warm-up trial per side before the measured rounds
    warmup_steps_per_trial: int = 1  # a warm-up only brings code and weights into the page cache
    polm_overrides: tuple = ()     # extra dotted overrides for polm's DPO config (A/B of a polm setting)

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
        "train.resume=false", *s.polm_overrides])


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

        common.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        reference, ref_info = build_reference(cfg, model, tokenizer, train_ex, collate)
        common.synchronize(device)
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
        common.synchronize(device)
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
    return {"precompute_ref_log_probs": precompute,
            "precompute_ref_batch_size": trl_ref_batch_size(s) if precompute else None, "padding_free": False,
            "gradient_checkpointing": False, "use_liger_kernel": False, "loss_type": ["sigmoid"],
            "disable_dropout": True, "max_length": s.max_length, "truncation_mode": "keep_start",
            "pad_to_multiple_of": "auto (no padding to a multiple on CPU/CUDA)",
            "train_sampling_strategy": "sequential"}


def trl_ref_batch_size(s: Settings) -> int:
    """TRL's precompute batch in pairs (each pair is 2 sequences): as many sequences per forward as polm."""
    return max(1, s.ref_batch_size // 2)


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
        precompute_ref_log_probs=spec["side"] == "trl-precompute", precompute_ref_batch_size=trl_ref_batch_size(s),
        train_sampling_strategy="sequential", seed=s.seed, data_seed=s.seed, logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )


def run_trl(spec: dict) -> dict:
    """TRL DPOTrainer on the same pairs as chat (prompt: a user turn; chosen/rejected: an assistant turn)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer
    from trl.trainer import dpo_trainer

    s, device = Settings(**spec["settings"]), spec["device"]
    pairs = [json.loads(line) for line in Path(spec["pairs_path"]).read_text().splitlines()]
    rows = [{"prompt": [{"role": "user", "content": p["prompt"]}],
             "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).to(device)
    peft_config = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=0.0, bias="none",
                             target_modules=list(s.lora_targets), task_type="CAUSAL_LM")

    clock, precompute = common.StepClock(), {"precompute_s": 0.0, "precompute_cpu_s": 0.0}
    steps_clock = common.trainer_step_clock(clock, device=device)

    def timed(fn):   # TRL runs the pass inside DPOTrainer(...): time its calls alone, added to precompute_s
        def wrapper(*args, **kwargs):
            common.synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            common.synchronize(device)
            precompute["precompute_s"] += time.perf_counter() - wall
            precompute["precompute_cpu_s"] += time.process_time() - cpu
            return out
        return wrapper

    DPOTrainer._precompute_ref_logps = timed(DPOTrainer._precompute_ref_logps)
    # the parameter hash keys TRL's precompute cache; it is taken only with precompute_ref_log_probs=True
    dpo_trainer.hash_module = timed(dpo_trainer.hash_module)
    with tempfile.TemporaryDirectory(prefix="polm-bench-trl-") as out_dir:
        trainer = DPOTrainer(model=model, args=_trl_args(spec, s, out_dir), train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config, callbacks=[steps_clock])
        tokenization = compare_tokenization(spec, trainer.train_dataset, tokenizer)
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    return {"losses": [h["loss"] for h in logs], "grad_norms": [h["grad_norm"] for h in logs],
            "logps_chosen": [h["logps/chosen"] for h in logs], "logps_rejected": [h["logps/rejected"] for h in logs],
            **precompute, "tokenization": tokenization,
            "rss_at_train_start_mib": steps_clock.rss_at_train_start_mib,
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


def worker(spec: dict) -> dict:
    common.set_threads(spec.get("threads"))
    result = {"side": spec["side"]}
    result.update(run_polm(spec) if spec["side"].startswith("polm") else run_trl(spec))
    return result


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
    training started, and the precompute pass (0 where a side has none) with its per-step share; min-max
    over trials in `spread`, and every trial's figures in `trials`."""
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
    medians = {key: common.median([p[key] for p in per_trial]) for key in per_trial[0]}
    spreads = {key: common.spread([p[key] for p in per_trial])
               for key in ("step_s", "step_cpu_s", "step_s_with_precompute", "precompute_s", "memory_mib")}
    return medians | {"spread": spreads, "trials": per_trial}


def sides_of(pairs: list[str]) -> list[str]:
    """The sides to run for these pairs, each polm side next to its TRL partner."""
    return [side for pair in pairs for side in PAIRS[pair]]


def check_precompute_ran(rounds: dict[str, list[dict]]) -> None:
    """A precompute side whose pass took no time read a cache: its step time would leave the pass out."""
    for side, trials in rounds.items():
        if side.endswith("precompute") and any(t["precompute_s"] <= 0 for t in trials):
            raise RuntimeError(f"{side}: a trial reports no precompute pass (a cached result?); "
                               "every trial must run the pass itself")


def check_same_work(rounds: dict[str, list[dict]]) -> dict:
    """Every side's first-step loss against log 2; per pair, polm against its TRL partner: first-step loss,
    step-1 policy log-probs of chosen / rejected, and the largest relative loss difference over the run."""
    out: dict = {"log2": math.log(2)}
    for side, trials in rounds.items():
        t = trials[0]
        out[side] = {"first_loss": t["losses"][0], "first_loss_diff_vs_log2": t["losses"][0] - math.log(2),
                     "first_logps_chosen": t["logps_chosen"][0], "first_logps_rejected": t["logps_rejected"][0],
                     "losses": t["losses"], "grad_norms": t["grad_norms"]}
    for polm_side, trl_side in (PAIRS[p] for p in PAIRS if PAIRS[p][0] in rounds and PAIRS[p][1] in rounds):
        a, b = rounds[polm_side][0], rounds[trl_side][0]
        diffs = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a["losses"], b["losses"])]
        out[polm_side] |= {"peer": trl_side, "first_loss_diff_vs_peer": a["losses"][0] - b["losses"][0],
                           "first_logps_chosen_diff_vs_peer": a["logps_chosen"][0] - b["logps_chosen"][0],
                           "first_logps_rejected_diff_vs_peer": a["logps_rejected"][0] - b["logps_rejected"][0],
                           "loss_rel_diff_max_vs_peer": max(diffs)}
    return out


def pair_ratios(sides: dict, rounds: dict[str, list[dict]], polm_side: str, trl_side: str) -> dict:
    """polm / TRL for one like-for-like pair: medians' ratios, and the ratio within each round (the two
    trials of a round ran next to each other) with its min-max, for the step time with the pass counted."""
    a, b = sides[polm_side], sides[trl_side]
    per_round = [x["step_s_with_precompute"] / y["step_s_with_precompute"]
                 for x, y in zip(a["trials"], b["trials"])]
    return {"polm": polm_side, "trl": trl_side,
            "step_time_with_precompute": a["step_s_with_precompute"] / b["step_s_with_precompute"],
            "step_time_with_precompute_per_round": common.spread(per_round),
            "step_time": a["step_s"] / b["step_s"], "step_cpu_time": a["step_cpu_s"] / b["step_cpu_s"],
            "precompute_pass": a["precompute_s"] / b["precompute_s"] if b["precompute_s"] else None,
            "memory": a["memory_mib"] / b["memory_mib"]}


def summarize(rounds: dict, steps: list[dict], peak: dict, device: str) -> dict:
    check_precompute_ran(rounds)
    sides = {side: summarize_side(trials, steps, peak, device) for side, trials in rounds.items()}
    pairs = {pair: pair_ratios(sides, rounds, *PAIRS[pair]) for pair in PAIRS
             if all(side in rounds for side in PAIRS[pair])}
    first_polm = next(t[0] for s, t in rounds.items() if s.startswith("polm"))
    first_trl = next(t[0] for s, t in rounds.items() if s.startswith("trl"))
    return {"headline": {pair: r["step_time_with_precompute"] for pair, r in pairs.items()},
            "pairs": pairs, "sides": sides, "same_work": check_same_work(rounds),
            "tokenization_check": first_trl["tokenization"], "trl_optimizer": first_trl["optimizer"],
            "params": first_polm["params"],
            "trainable": {side: t[0]["trainable"] for side, t in rounds.items()},
            "polm_reference": {side: t[0]["reference"] for side, t in rounds.items() if side.startswith("polm")},
            "polm_tokens_per_step": first_polm["tokens"], "polm_targets_per_step": first_polm["targets"]}


def print_table(results: dict, device: str) -> None:
    sides, pairs = list(results["sides"]), results["pairs"]
    mem = "peak CUDA MiB" if device.startswith("cuda") else "peak RSS MiB"
    figures = [("step time s (median, steps 2..N)", "step_s"), ("step CPU s", "step_cpu_s"),
               ("precompute pass s", "precompute_s"), ("precompute s per step", "precompute_per_step_s"),
               ("step + precompute share s", "step_s_with_precompute"), (mem, "memory_mib"),
               ("RSS at train start MiB", "rss_at_train_start_mib"), ("MFU (policy work)", "mfu")]
    rows = []
    for label, key in figures:
        ratios = []
        for r in pairs.values():
            peer = results["sides"][r["trl"]][key]
            ratios.append(results["sides"][r["polm"]][key] / peer if peer else "-")
        rows.append([label, *[results["sides"][s][key] for s in sides], *ratios])
    work = results["same_work"]
    rows.append(["first-step loss", *[work[s]["first_loss"] for s in sides],
                 *[work[r["polm"]]["first_loss"] / work[r["trl"]]["first_loss"] for r in pairs.values()]])
    print(common.format_table(["figure", *sides, *[f"{p}: polm/trl" for p in pairs]], rows))
    for pair, r in pairs.items():
        w, rounds = work[r["polm"]], r["step_time_with_precompute_per_round"]
        print(f"{pair}: {r['polm']} vs {r['trl']}: step time with the precompute share x{r['step_time_with_precompute']:.2f} "
              f"(per round {rounds['min']:.2f}-{rounds['max']:.2f}), step alone x{r['step_time']:.2f}, "
              f"memory x{r['memory']:.2f}; first-step loss {w['first_loss']:.6f} vs {work[r['trl']]['first_loss']:.6f} "
              f"(diff {w['first_loss_diff_vs_peer']:+.1e}), step-1 logps diff chosen "
              f"{w['first_logps_chosen_diff_vs_peer']:+.3f} rejected {w['first_logps_rejected_diff_vs_peer']:+.3f}, "
              f"loss rel. diff max {w['loss_rel_diff_max_vs_peer']:.1e}")
    tok = results["tokenization_check"]
    print(f"tokenization: {tok['ids_identical']}/{tok['sequences']} sequences with identical ids, "
          f"{tok['targets_identical']} with identical targets; TRL-only targets {tok['trl_only_targets']} "
          f"{tok['trl_only_tokens']}, polm-only {tok['polm_only_targets']} {tok['polm_only_tokens']}")
    print("headline (polm / TRL, like for like, precompute pass counted): "
          + ", ".join(f"{pair} x{ratio:.2f}" for pair, ratio in results["headline"].items()))


def goals(results: dict) -> dict:
    """Per pair: polm's step (precompute share counted) <= TRL's, no more memory, the same first-step loss."""
    out = {}
    for pair, r in results["pairs"].items():
        w = results["same_work"][r["polm"]]
        out |= {f"{pair}_step_with_precompute_le_1.0x": r["step_time_with_precompute"] <= 1.0,
                f"{pair}_memory_le_1.0x": r["memory"] <= 1.0,
                f"{pair}_same_first_loss": abs(w["first_loss_diff_vs_peer"]) < 1e-4}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="3 steps of 4 pairs, one round, no warm-up")
    parser.add_argument("--pairs", default=",".join(PAIRS),
                        help=f"comma-separated like-for-like pairs to run (default both): {', '.join(PAIRS)}")
    parser.add_argument("--steps", type=int, help="optimizer steps per trial")
    parser.add_argument("--polm-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted override for polm's side only (repeatable), e.g. train.malloc_mmap_threshold_mb=0")
    parser.add_argument("--repeats", type=int, help="measured rounds per side")
    common.add_output_args(parser, "dpo_vs_trl", common.THREADS_HELP_CONTENDED)
    args = parser.parse_args(argv)
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    if not pairs or set(pairs) - set(PAIRS):
        parser.error(f"--pairs must name one or more of: {', '.join(PAIRS)}")
    args.pairs = list(dict.fromkeys(pairs))
    return args


def run_sides(settings: Settings, sides: list[str], base: dict) -> tuple[dict, dict]:
    """Warm up each side once (if asked), then alternate measured trials: ({side: [trial]}, {side: warm-up})."""
    spec = {**base, "steps": settings.steps}
    warm = {**spec, "steps": settings.warmup_steps_per_trial}
    return common.alternate_workers(SCRIPT, {side: {**spec, "side": side} for side in sides}, settings.repeats,
                                    {side: {**warm, "side": side} for side in sides} if settings.warmup else None,
                                    log=lambda m: print(f"  {m}", flush=True))


def run_benchmark(args: argparse.Namespace, settings: Settings) -> dict:
    """Build and encode the pairs once, time the matmul peak, run every side; the report that goes to JSON."""
    from polm.assets import resolve_model
    from polm.models import load_tokenizer

    sides = sides_of(args.pairs)
    model_dir = resolve_model(MODEL)
    pairs = build_pairs(settings)
    encoded = encode_for_report(pairs, load_tokenizer(model_dir), settings)
    steps = per_step_tokens(encoded, settings)
    common.set_threads(args.threads)  # the matmul peak is measured with the workers' thread count
    machine = common.machine_description(args.device, ("torch", "transformers", "peft", "trl", "accelerate"))
    peak = common.matmul_peak_flops(args.device)
    lengths = sorted(len(ex[k]["input_ids"]) for ex in encoded for k in ("chosen", "rejected"))
    print(f"{machine['cpu']} ({machine['cores']} cores, {machine['torch_threads']} torch threads, load "
          f"{machine['load_avg_1m_at_start']}), matmul peak {peak['flops_per_s'] / 1e9:.1f} GFLOP/s; {len(pairs)} pairs, "
          f"sequences of {lengths[0]}-{lengths[-1]} tokens; sides {', '.join(sides)}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="polm-bench-data-") as tmp:
        pairs_path, encoded_path = Path(tmp) / "pairs.jsonl", Path(tmp) / "encoded.json"
        pairs_path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        encoded_path.write_text(json.dumps(encoded))
        base = {"model_dir": model_dir, "device": args.device, "settings": asdict(settings), "threads": args.threads,
                "pairs_path": str(pairs_path), "encoded_path": str(encoded_path)}
        rounds, _ = run_sides(settings, sides, base)
    results = summarize(rounds, steps, peak, args.device)
    return {
        "benchmark": "dpo_vs_trl", "command": common.command_line(SCRIPT),
        "quick": args.quick, "device": args.device, "machine": machine, "pairs": {p: PAIRS[p] for p in args.pairs},
        "order": [f"{r + 1}:{side}" for r, side in common.alternation_order(sides, settings.repeats)],
        "matmul_peak": {"start": peak, "end": common.matmul_peak_flops(args.device)}, "settings": asdict(settings),
        "trl_options": {side: trl_options(settings, side == "trl-precompute") for side in sides
                        if side.startswith("trl")},
        "trl_notes": {"padding_free": "TRL 1.16 DPOTrainer: 'temporarily unavailable', True warns and pads",
                      "gradient_checkpointing": "DPOConfig default True; off here, as polm's default",
                      "bf16": "DPOConfig default True; set from --device (fp32 on CPU, as polm)",
                      "precompute_ref_batch_size": "in pairs; polm's reference.batch_size / 2, so both sides run "
                                                   "the same number of sequences per forward in the pass",
                      "precompute_s": "TRL: _precompute_ref_logps plus the hash_module call that keys its cache",
                      "fused_lm_head": "always on in TRL 1.16 (chunked log-probs)"},
        "data": {"source": DATA, "builder": "polm data preferences references --perturb wrong-number",
                 "pairs": len(pairs), "example": pairs[0], "sequence_length_min": lengths[0],
                 "sequence_length_median": lengths[len(lengths) // 2], "sequence_length_max": lengths[-1],
                 "tokens_per_step": [s["tokens"] for s in steps], "targets_per_step": [s["targets"] for s in steps]},
        "results": results, "goals": goals(results),
        "wall_s": round(time.perf_counter() - started, 1), "load_avg_1m_at_end": common.load_avg_1m()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if common.serve_worker(args, worker, common.HF_WORKER_ENV_NO_TQDM):
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = common.with_flags(Settings(polm_overrides=tuple(args.polm_override)), QUICK if args.quick else None,
                                 steps=args.steps, repeats=args.repeats)
    if settings.steps < 2:
        raise SystemExit("--steps must be at least 2 (step 1 is not timed)")
    out = common.results_path("dpo_vs_trl", args.quick, args.out)
    report = run_benchmark(args, settings)
    print_table(report["results"], args.device)
    print("goals: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in report["goals"].items()))
    common.write_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
