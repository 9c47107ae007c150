"""polm GRPO vs TRL `GRPOTrainer` on the embedded SmolLM2-135M-Instruct (LoRA, no vLLM on either side).

    python bench/grpo_vs_trl.py --quick            # 3 steps of 2 prompts x 4, warm-up + 3 rounds per side
    python bench/grpo_vs_trl.py                    # the recorded run: 6 steps of 4 prompts x 8, 64 tokens
    python bench/grpo_vs_trl.py --device cuda
    python bench/grpo_vs_trl.py --natural-length   # completions end at EOS; the headline is then s per token

The same work on both sides: the SAME chat-formatted reasoning-gym prompts in the same order (the parent
draws them in the order polm's rollout stream serves them and gives TRL that list, unshuffled), the same
group size, temperature, steps, LoRA (r, alpha = 2r, dropout 0, all 7 projections), AdamW settings,
constant lr, clipping, the task's scorer as reward, the grpo loss with beta = 0, fp32 on CPU (bf16
autocast on CUDA), and the SAME number of generated tokens: EOS cannot be sampled before max_new_tokens
(TRL: `generation_kwargs={"min_new_tokens": max_new_tokens}`, HF's MinNewTokensLengthLogitsProcessor;
polm: `rollout.min_new_tokens = max_new_tokens`, which masks EOS out of the sampled distribution
while scoring tokens under the unmasked policy). Per optimizer step each side runs one generation, one forward
and one backward of all P x G completions, and one optimizer step: TRL's options that would add passes
(gradient checkpointing, num_iterations, steps_per_generation, the old-logprob forward, a reference
model) or change precision (bf16 autocast on CPU, its default) are set and listed in the JSON with why.

Each trial is a fresh process. One warm-up trial per side (1 step, discarded), then rounds in
alternating order (polm trl, trl polm, ...). Per step: wall and CPU seconds, generation (rollout +
scoring) and training (the rest), generated tokens; steps 2..N count (step 1 pays one-off allocation).
The script fails (exit 1, after writing the JSON) if the prompts or generated-token counts differ.
Writes bench/results/grpo_vs_trl.json (_quick.json with --quick) with the command, machine, load
average at start and end (also per trial), per-repeat values and medians.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import common

SCRIPT = Path(__file__).resolve()
MODEL = "smollm2-135m-instruct"
DATA = "builtin:reasoning-gym/basic_arithmetic?n=64&seed=21&min_terms=2&max_terms=2&min_digits=1&max_digits=2"
SUFFIX = "Give the final answer on the last line as 'Answer: <answer>'."
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SIDES = ("polm", "trl")


@dataclass
class Settings:
    model: str = MODEL               # an embedded name or a model directory
    steps: int = 6
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    lr: float = 1e-5
    lora_r: int = 16
    max_grad_norm: float = 1.0
    clip: float = 0.2                # PPO-style clip on the importance ratio, both sides
    seed: int = 0
    device: str = "cpu"
    fixed_length: bool = True        # every completion exactly max_new_tokens (EOS masked on both sides)
    repeats: int = 3
    warmup: bool = True              # one 1-step trial per side first, discarded
    threads: int | None = None       # torch intra-op threads per worker (None: one per core)

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.group_size


QUICK = {"steps": 3, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 32, "repeats": 3}


# --- prompts (parent) --------------------------------------------------------------------------------

def step_prompts(s: Settings) -> list[dict]:
    """The prompt records of every step, in the order polm's RolloutStream draws them (a BatchStream over
    the prompts with the run's seed), flattened: TRL reads this list unshuffled, so both see the same."""
    from polm.data.loaders import load_records
    from polm.train.batches import BatchStream

    records = load_records(DATA, require_targets=False).records
    stream = BatchStream(records, list, s.prompts_per_step, seed=s.seed)
    return [rec for _ in range(s.steps) for rec in next(stream)]


# --- workers (one fresh process per trial) -----------------------------------------------------------

class PhaseClock:
    """Wall and CPU seconds of each call of one phase (generation), with what the call produced."""

    def __init__(self):
        self.calls: list[dict] = []

    def timed(self, fn, describe):
        """fn wrapped: each call appends {"wall_s", "cpu_s", **describe(args, result)} to `calls`."""
        def wrapper(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            self.calls.append({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                               **describe(args, out)})
            return out
        return wrapper


def per_step(clock: common.StepClock, generation: list[dict], rewards: list[float]) -> list[dict]:
    """One row per optimizer step: step and generation wall/CPU seconds, generated tokens, reward."""
    d = clock.as_dict()
    return [{"step_s": w, "step_cpu_s": c, "generation_s": g["wall_s"], "generation_cpu_s": g["cpu_s"],
             "generated_tokens": g["tokens"], "completions": g["completions"], "prompts": g["prompts"],
             "reward": r} for w, c, g, r in zip(d["step_wall_s"], d["step_cpu_s"], generation, rewards)]


def polm_overrides(s: Settings, steps: int, out: Path) -> list[str]:
    n = s.completions_per_step
    return [
        f"output_dir={out}", "overwrite=true", f"model.name={s.model}", f"model.device={s.device}", "model.dtype=fp32",
        "model.gradient_checkpointing=false", "method=lora", f"lora.r={s.lora_r}", f"lora.alpha={2 * s.lora_r}",
        "lora.dropout=0.0", f"lora.target_modules=[{','.join(TARGETS)}]", f"data.train={DATA}",
        f"rollout.prompts_per_rollout={s.prompts_per_step}", f"rollout.group_size={s.group_size}",
        f"rollout.max_new_tokens={s.max_new_tokens}", f"rollout.min_new_tokens={s.max_new_tokens if s.fixed_length else 0}",
        f"rollout.temperature={s.temperature}", "rollout.top_p=1.0",
        "rollout.top_k=0", "rewards={reasoning_gym: 1.0}", "advantage=grpo", "loss=grpo", "beta=0",
        "epochs_per_rollout=1", f"clip_low={s.clip}", f"clip_high={s.clip}",
        f"train.max_steps={steps}", f"train.micro_batch_size={n}", "train.grad_accum=1", f"train.lr={s.lr}",
        "train.schedule=constant", "train.warmup_steps=0", "train.weight_decay=0.0", "train.adam_betas=[0.9,0.999]",
        "train.adam_eps=1e-8", f"train.max_grad_norm={s.max_grad_norm}",
        f"train.precision={common.precision_for(s.device)}", f"train.seed={s.seed}", "train.log_every=1",
        "train.resume=false", "train.progress=false", "train.tensorboard=false"]


def polm_worker(s: Settings, steps: int, out: Path) -> dict:
    """polm's GRPO recipe (`run_grpo`) with clocks around its rollout stream and its generator."""
    import torch

    from polm.config import load_config
    from polm.recipes import grpo
    from polm.rollout.hf import HFGenerator
    from polm.rollout.stream import RolloutStream

    clock, rollout, generated, eos_seen = common.StepClock(), PhaseClock(), [], []
    init, generate, next_batch, train = HFGenerator.__init__, HFGenerator.generate, RolloutStream.__next__, grpo.train

    def init_counted(self, *args, **kwargs):   # records the end-of-sequence ids polm stops at
        init(self, *args, **kwargs)
        eos_seen.extend(self.eos_ids.tolist())

    def counted_generate(self, prompt_ids, *args, **kwargs):
        completions = generate(self, prompt_ids, *args, **kwargs)
        generated.append({"tokens": sum(len(c.token_ids) for c in completions), "completions": len(completions),
                          "prompts": [list(p) for p in prompt_ids]})
        return completions

    def next_step(self):                     # grad_accum = 1, epochs = 1: every batch starts a step
        clock.mark()
        return next_batch(self)

    def train_then_stop(*args, **kwargs):
        result = train(*args, **kwargs)
        clock.finish()
        return result

    HFGenerator.__init__, HFGenerator.generate = init_counted, counted_generate
    RolloutStream.__next__, grpo.train = next_step, train_then_stop
    # generation phase = a rollout refill: generate + score + advantages, as TRL's _generate_and_score_completions
    RolloutStream._refill = rollout.timed(RolloutStream._refill, lambda args, out: {})
    cfg = load_config(grpo.GRPOConfig, None, polm_overrides(s, steps, out))
    cfg.data.prompt_suffix = SUFFIX   # set directly: YAML would read its ': ' as a mapping
    torch.manual_seed(s.seed)
    result = grpo.run_grpo(cfg)
    rewards = [r["reward/mean"] for r in _metrics(out)]
    generation = [{**phase, **count} for phase, count in zip(rollout.calls, generated)]
    return {"steps": per_step(clock, generation, rewards), "eos_ids": sorted(set(eos_seen)),
            "final_loss": result["losses"][-1] if result["losses"] else None}


def _metrics(run_dir: Path) -> list[dict]:
    from polm.train.metrics import read_metrics

    return [r for r in read_metrics(run_dir) if "loss" in r]


def trl_options(s: Settings, steps: int) -> dict[str, dict]:
    """Every GRPOConfig option this bench sets, with why (trl 1.16 file:line): {name: {"value", "why"}}."""
    cuda = s.device.startswith("cuda")
    opts = {
        "per_device_train_batch_size": (s.completions_per_step, "all P x G completions in one micro-batch, as "
                                        "polm's train.micro_batch_size"),
        "gradient_accumulation_steps": (1, "one forward + backward per optimizer step, as polm"),
        "steps_per_generation": (1, "one generation per optimizer step (default None -> grad accum, "
                                 "grpo_config.py __post_init__)"),
        "num_iterations": (1, "mu = 1 (polm epochs_per_rollout=1); with grad_accum % (steps_per_generation x "
                           "num_iterations) == 0 TRL skips the old-logprob forward (grpo_trainer.py:2642-2657)"),
        "num_generations": (s.group_size, "group size G"),
        "max_completion_length": (s.max_new_tokens, "polm rollout.max_new_tokens"),
        "generation_kwargs": ({"min_new_tokens": s.max_new_tokens} if s.fixed_length else None,
                              "fixed length: EOS masked until max_new_tokens (merged into the GenerationConfig, "
                              "grpo_trainer.py:1170-1173); polm masks EOS likewise"),
        "mask_truncated_completions": (False, "default; with fixed length every completion is 'truncated', and "
                                       "True would drop them all from the loss"),
        "temperature": (s.temperature, "same sampling"), "top_p": (1.0, "default, as polm"),
        "top_k": (0, "default, as polm"), "repetition_penalty": (1.0, "default"),
        "learning_rate": (s.lr, "same"), "lr_scheduler_type": ("constant", "same"), "warmup_steps": (0, "same"),
        "weight_decay": (0.0, "same (polm default)"), "adam_beta1": (0.9, "same"), "adam_beta2": (0.999, "same"),
        "adam_epsilon": (1e-8, "same"), "max_grad_norm": (s.max_grad_norm, "same clipping"),
        "beta": (0.0, "no KL term, no reference forward (grpo_trainer.py:2710)"),
        "loss_type": ("grpo", "polm loss=grpo"), "epsilon": (s.clip, "clip, polm clip_low = clip_high"),
        "bf16": (cuda, "GRPOConfig defaults bf16=True when fp16 is unset (base_config.py:68-75, 108): on CPU "
                       "every training forward and backward runs under bf16 autocast (grpo_trainer.py:1497) while "
                       "generation stays fp32; polm trains fp32 on CPU, bf16 autocast on CUDA"),
        "fp16": (False, "default"),
        "activation_checkpointing": (False, "TRL defaults gradient_checkpointing=True (base_config.py:62-67), "
                                     "which transformers 5 carries into activation_checkpointing (its alias, "
                                     "training_args.py:1533-1545): every layer's forward re-runs in the backward "
                                     "(~+1 forward per step); polm's default is off"),
        "model_init_kwargs": ({"dtype": "float32"}, "fp32 weights (TRL's default, trainer/utils.py:1332; polm "
                              "model.dtype=fp32); autocast supplies bf16 on CUDA on both sides"),
        "use_cpu": (not cuda, "run on the CPU when --device cpu"),
        "use_liger_kernel": (False, "default (Triton kernels, GPU only)"),
        "torch_empty_cache_steps": (None, "default: no empty_cache calls"),
        "dataloader_num_workers": (0, "default: prompts are loaded in the main process"),
        "cast_lm_head_to_fp32": (False, "default"), "use_vllm": (False, "transformers generate, as polm's hf backend"),
        "use_transformers_continuous_batching": (False, "default: plain generate"),
        "top_entropy_quantile": (1.0, "default: all tokens in the loss"), "entropy_coef": (0.0, "default"),
        "disable_dropout": (False, "default; SmolLM2 has no dropout (attention_dropout 0) and LoRA dropout is 0"),
        "shuffle_dataset": (False, "the parent gives the prompts in polm's order"),
        "max_steps": (steps, "same steps"), "seed": (s.seed, "same seed"), "logging_steps": (1, "a reward per step"),
        "log_completions": (False, "default"), "save_strategy": ("no", "no checkpoints"),
        "report_to": ("none", "no loggers"), "disable_tqdm": (True, "no progress bar"),
    }
    return {name: {"value": value, "why": why} for name, (value, why) in opts.items()}


def trl_worker(s: Settings, steps: int, out: Path, prompts_path: Path) -> dict:
    """TRL GRPOTrainer.train() on the parent's prompt list, with clocks around generation and each step."""
    import datasets
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from polm.assets import resolve_model
    from polm.verify import score_response

    records = [json.loads(line) for line in prompts_path.read_text().splitlines()]
    rows = [{"prompt": [{"role": "user", "content": f"{r['prompt']}\n{SUFFIX}"}], "record": json.dumps(r)}
            for r in records]

    def reward(completions, record, **_):
        return [score_response(c[0]["content"], json.loads(rec)) for c, rec in zip(completions, record)]

    def counted(args, output):
        ids, mask = output["prompt_ids"], output["prompt_mask"].bool()
        prompts = list(dict.fromkeys(tuple(row[m].tolist()) for row, m in zip(ids, mask)))
        return {"tokens": int(output["completion_mask"].sum()), "completions": int(mask.shape[0]),
                "prompts": [list(p) for p in prompts]}

    clock, gen = common.StepClock(), PhaseClock()
    GRPOTrainer._generate_and_score_completions = gen.timed(GRPOTrainer._generate_and_score_completions, counted)

    options = trl_options(s, steps)
    args = GRPOConfig(output_dir=str(out), **{k: v["value"] for k, v in options.items()})
    peft = LoraConfig(r=s.lora_r, lora_alpha=2 * s.lora_r, lora_dropout=0.0, bias="none", target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=resolve_model(s.model), reward_funcs=reward, args=args,
                          train_dataset=datasets.Dataset.from_list(rows), peft_config=peft,
                          callbacks=[common.trainer_step_clock(clock)])
    trainer.train()
    a = trainer.args
    resolved = {"bf16": a.bf16, "fp16": a.fp16, "activation_checkpointing": a.activation_checkpointing,
                "steps_per_generation": a.steps_per_generation, "generation_batch_size": a.generation_batch_size,
                "num_iterations": a.num_iterations, "optim": str(getattr(a.optim, "value", a.optim)),
                "mixed_precision": str(trainer.accelerator.mixed_precision),
                "model_dtype": str(next(trainer.model.parameters()).dtype)}
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"steps": per_step(clock, gen.calls, rewards), "eos_ids": sorted(trainer.eos_token_ids),
            "resolved_args": resolved}


def worker(spec: dict) -> dict:
    s = Settings(**spec["settings"])
    common.set_threads(s.threads)
    load_start = common.load_avg_1m()
    with tempfile.TemporaryDirectory(prefix="polm-grpo-bench-") as tmp:
        run = Path(tmp) / "run"
        result = (polm_worker(s, spec["steps"], run) if spec["side"] == "polm"
                  else trl_worker(s, spec["steps"], run, Path(spec["prompts_path"])))
    return {**result, "side": spec["side"], "load_avg_1m_start": load_start, "load_avg_1m_end": common.load_avg_1m()}


# --- summary (parent) --------------------------------------------------------------------------------

FIGURES = ("step_s", "step_cpu_s", "generation_s", "generation_cpu_s", "training_s", "generated_tokens",
           "step_s_per_generated_token", "generation_s_per_generated_token", "peak_rss_mib", "reward_mean")


def trial_figures(trial: dict) -> dict:
    """One trial's figures over steps 2..N (all steps if there is one): medians per step, and seconds per
    generated token (summed seconds / summed tokens). training_s = step_s - generation_s, per step."""
    steps = trial["steps"][1:] or trial["steps"]
    tokens = sum(st["generated_tokens"] for st in steps)
    return {"step_s": common.median([st["step_s"] for st in steps]),
            "step_cpu_s": common.median([st["step_cpu_s"] for st in steps]),
            "generation_s": common.median([st["generation_s"] for st in steps]),
            "generation_cpu_s": common.median([st["generation_cpu_s"] for st in steps]),
            "training_s": common.median([st["step_s"] - st["generation_s"] for st in steps]),
            "generated_tokens": common.median([st["generated_tokens"] for st in steps]),
            "step_s_per_generated_token": sum(st["step_s"] for st in steps) / max(tokens, 1),
            "generation_s_per_generated_token": sum(st["generation_s"] for st in steps) / max(tokens, 1),
            "peak_rss_mib": trial["peak_rss_mib"],
            "reward_mean": sum(st["reward"] for st in trial["steps"]) / max(len(trial["steps"]), 1)}


def summarize_side(trials: list[dict]) -> dict:
    """{figure: median over trials}, with {figure: spread} and each trial's figures and per-step rows."""
    figures = [trial_figures(t) for t in trials]
    return ({key: common.median([f[key] for f in figures]) for key in FIGURES}
            | {"spread": {key: common.spread([f[key] for f in figures]) for key in FIGURES},
               "trials": [{**f, "load_avg_1m_start": t["load_avg_1m_start"], "load_avg_1m_end": t["load_avg_1m_end"],
                           "steps": [{k: v for k, v in st.items() if k != "prompts"} for st in t["steps"]]}
                          for f, t in zip(figures, trials)]})


def ratios(sides: dict) -> dict:
    """polm / TRL of the medians, and per round (the two trials of a round ran next to each other)."""
    polm, trl = sides["polm"], sides["trl"]
    out = {key: polm[key] / trl[key] if trl[key] else None
           for key in ("step_s", "step_cpu_s", "generation_s", "training_s", "step_s_per_generated_token",
                       "generation_s_per_generated_token", "peak_rss_mib")}
    for key in ("step_s", "training_s", "step_s_per_generated_token"):
        out[f"{key}_per_round"] = common.spread([a[key] / b[key] for a, b in zip(polm["trials"], trl["trials"])
                                                 if b[key]])
    return out


def check_same_work(rounds: dict[str, list[dict]], s: Settings) -> dict:
    """Same prompts per step on every trial of both sides; with fixed length, exactly P x G x max_new_tokens
    generated tokens per step on both. `problems` lists what differs; `ok` is False if anything does."""
    problems = []
    prompts = {side: [[sorted(map(tuple, st["prompts"])) for st in t["steps"]] for t in trials]
               for side, trials in rounds.items()}
    reference = prompts["polm"][0]
    for side, per_trial in prompts.items():
        for i, steps in enumerate(per_trial):
            bad = [k + 1 for k, (a, b) in enumerate(zip(steps, reference)) if a != b]
            if bad or len(steps) != len(reference):
                problems.append(f"{side} trial {i + 1}: prompt token ids differ from polm's at steps {bad}")
    tokens = {side: [[st["generated_tokens"] for st in t["steps"]] for t in trials] for side, trials in rounds.items()}
    expected = s.completions_per_step * s.max_new_tokens if s.fixed_length else None
    if expected is not None:
        for side, per_trial in tokens.items():
            for i, counts in enumerate(per_trial):
                if any(c != expected for c in counts):
                    problems.append(f"{side} trial {i + 1}: generated tokens per step {counts}, expected {expected}")
    return {"ok": not problems, "problems": problems, "prompts_per_step": s.prompts_per_step,
            "prompt_tokens_per_step": [sum(len(p) for p in step) for step in reference],
            "expected_generated_tokens_per_step": expected, "generated_tokens_per_step": tokens}


def print_table(report: dict) -> None:
    sides, r = report["results"]["sides"], report["results"]["ratios"]
    labels = [("s/step", "step_s"), ("CPU s/step", "step_cpu_s"), ("generation s", "generation_s"),
              ("training s", "training_s"), ("generated tokens/step", "generated_tokens"),
              ("s/step per generated token", "step_s_per_generated_token"), ("peak RSS MiB", "peak_rss_mib"),
              ("reward mean", "reward_mean")]
    rows = []
    for label, key in labels:
        cells = [f"{sides[x][key]:.4g} ({sides[x]['spread'][key]['min']:.3g}-{sides[x]['spread'][key]['max']:.3g})"
                 for x in SIDES]
        rows.append([label, *cells, f"{r[key]:.2f}" if r.get(key) else "-"])
    print(common.format_table(["figure (median, min-max)", "polm", "trl", "polm/trl"], rows))
    head = report["results"]["headline"]
    per_round = r[f"{head['figure']}_per_round"]
    print(f"headline: polm / TRL {head['figure']} x{head['ratio']:.2f} (per round {per_round['min']:.2f}-"
          f"{per_round['max']:.2f}); training phase x{r['training_s']:.2f}, generation x{r['generation_s']:.2f}")
    work = report["results"]["same_work"]
    print("same work: " + ("yes" if work["ok"] else "NO: " + "; ".join(work["problems"])))


def run_benchmark(s: Settings, quick: bool) -> dict:
    machine = common.machine_description(s.device, ("torch", "transformers", "peft", "trl", "accelerate"))
    common.set_threads(s.threads)
    peaks = {"fp32": common.matmul_peak_flops(s.device, dtype="float32"),
             "bf16": common.matmul_peak_flops(s.device, dtype="bfloat16")}
    print(f"{machine['cpu']} ({machine['cores']} cores, load {machine['load_avg_1m_at_start']}); matmul GFLOP/s "
          f"fp32 {peaks['fp32']['flops_per_s'] / 1e9:.0f}, bf16 {peaks['bf16']['flops_per_s'] / 1e9:.0f}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="polm-grpo-bench-data-") as tmp:
        prompts_path = Path(tmp) / "prompts.jsonl"
        prompts_path.write_text("".join(json.dumps(r) + "\n" for r in step_prompts(s)))
        base = {"settings": asdict(s), "prompts_path": str(prompts_path)}
        rounds, _ = common.alternate_workers(
            SCRIPT, {side: {**base, "side": side, "steps": s.steps} for side in SIDES}, s.repeats,
            {side: {**base, "side": side, "steps": 1} for side in SIDES} if s.warmup else None,
            log=lambda m: print(f"  {m}", flush=True), timeout_s=3600)
    sides = {side: summarize_side(trials) for side, trials in rounds.items()}
    r = ratios(sides)
    figure = "step_s" if s.fixed_length else "step_s_per_generated_token"
    return {
        "benchmark": "grpo_vs_trl", "command": common.command_line(SCRIPT), "quick": quick, "settings": asdict(s),
        "machine": machine, "load_avg_1m_at_end": common.load_avg_1m(), "wall_s": round(time.perf_counter() - started, 1),
        "matmul_peak": {**peaks, "fp32_end": common.matmul_peak_flops(s.device, dtype="float32")},
        "order": (["warm-up: polm, trl"] if s.warmup else [])
                 + [f"{r + 1}:{side}" for r, side in common.alternation_order(SIDES, s.repeats)],
        "trl_options": trl_options(s, s.steps), "trl_resolved_args": rounds["trl"][0]["resolved_args"],
        "trl_cpu_note": "not a setting: on devices without Triton TRL's fused LM head scores every position "
                        "(prompt and padding too, trl/trainer/utils.py:1638-1641), polm only the completion's",
        "passes_per_step": "both: one generation (KV cache), one forward + backward of all completions, one "
                           "optimizer step; no reference forward (beta 0), no old-logprob forward (mu 1)",
        "eos_ids": {side: rounds[side][0]["eos_ids"] for side in SIDES},
        "results": {"headline": {"figure": figure, "ratio": r[figure]}, "ratios": r, "sides": sides,
                    "same_work": check_same_work(rounds, s)}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 steps of 2 prompts x 4, 32 tokens, 3 rounds")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--steps", type=int, help="optimizer steps per trial (>= 2; step 1 is not timed)")
    parser.add_argument("--repeats", type=int, help="measured rounds per side (>= 3)")
    parser.add_argument("--natural-length", action="store_true",
                        help="let completions end at EOS (the headline becomes seconds per generated token)")
    common.add_output_args(parser, "grpo_vs_trl")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if common.serve_worker(args, worker, common.HF_WORKER_ENV_NO_TQDM):
        return 0
    s = common.with_flags(Settings(device=args.device, threads=args.threads, fixed_length=not args.natural_length),
                          QUICK if args.quick else None, steps=args.steps, repeats=args.repeats)
    if s.steps < 2 or s.repeats < 3:
        raise SystemExit("--steps must be at least 2 (step 1 is not timed) and --repeats at least 3")
    report = run_benchmark(s, args.quick)
    print_table(report)
    common.write_report(common.results_path("grpo_vs_trl", args.quick, args.out), report)
    return 0 if report["results"]["same_work"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
