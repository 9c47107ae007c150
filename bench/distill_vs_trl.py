"""polm distillation vs TRL `GKDTrainer` (trl.experimental.gkd) on the embedded SmolLM2-135M-Instruct, LoRA student.

    python bench/distill_vs_trl.py --quick          # smoke run: 2 steps of 2 examples, 8 new tokens, 1 round
                                                    # per mode, no warm-up (~1.5 minutes on 2 CPU cores)
    python bench/distill_vs_trl.py --threads 2      # the recorded run: 4 steps of 4, 24 new tokens, 3 rounds
                                                    # per mode (estimated 7-8 minutes on 2 CPU cores)
    python bench/distill_vs_trl.py --device cuda
    python bench/distill_vs_trl.py --modes offpolicy

Two modes, each polm's `run_distill` against `GKDTrainer.train()`:
- offpolicy: λ = 0, both sides score the dataset completions (polm packs them into one row, TRL's
  DataCollatorForChatML left-pads them);
- onpolicy: λ = 1, every step the student samples its own completions of the step's prompts and the
  teacher scores them (polm through its HFGenerator, TRL through `model.generate`).

The same work on both sides: the SAME student (SmolLM2, LoRA r 16 / alpha 32 / dropout 0 on the 7
projections, fp32 weights), the SAME teacher (by default SmolLM2 with seeded Gaussian noise of
`teacher_noise` x each matrix's std added to every non-embedding matrix, built once by the parent and
saved as safetensors: a teacher that differs from the student, so the first-step loss is not 0; or
`--teacher DIR`), the SAME examples in the same order (polm's encoding of the config's arithmetic data,
served in the order of polm's seeded BatchStream; TRL gets those token ids pre-tokenized with their
completion mask, ending at the last target token), the same loss (jsd with β; τ = 1, because TRL's
compute_loss calls generalized_jsd_loss without a temperature; GKDConfig.temperature is only its
sampling temperature, = polm rollout.temperature), the same λ, micro-batch, AdamW settings, constant lr,
clipping, steps and seed, fp32 on CPU (bf16 autocast on CUDA). On-policy completions are fixed-length
on both sides: EOS cannot be sampled before max_new_tokens (polm rollout.min_new_tokens; TRL
min_new_tokens set on the trainer's GenerationConfig), so both score exactly micro_batch x
max_new_tokens target tokens per step. Prompt tokens are masked on both sides.

The first-step loss (fresh LoRA: B = 0, so student = SmolLM2) is compared as the same quantity: the
sum over target tokens of JSD_β divided by their number. polm: the loop's logged loss (loss_sum /
target tokens). TRL: a wrapper around GKDTrainer.generalized_jsd_loss records the masked sum and count
it computed (its returned value divides by num_items_in_batch, which the Trainer counts on the batch
BEFORE on-policy generation replaces the labels, so on-policy it is not the per-token mean; both are
in the JSON). Off-policy the two scored batches are identical by construction, and the check applies.
On-policy it applies only when both sides sampled the same completions: TRL's generate is seeded,
by a wrapper, with the seed polm's generator uses for that rollout (train.seed + rollout index), and
both draw with torch.multinomial from the CPU generator; where a single token differs (tiny float
differences between the two decoders can tip a draw) the on-policy loss is reported as "not
comparable", never as a failure or a pass.

Figures per side: step time (median over steps 2..N, step 1 pays one-off allocation), split into
generation and the rest; peak RSS of the training steps alone (common.PeakRss: VmHWM reset when
training starts, so model loading and imports do not count) and of the whole worker. Each trial is a
fresh process; per mode one warm-up trial per side (1 step), then rounds alternating polm trl,
trl polm, ... . Goals: step time <= 0.7x TRL, peak training RSS <= 0.8x TRL, first-step loss equal
within `loss_rtol`. The script fails (exit 1, after writing the JSON) if the work differs (targets
per step, scored token ids, prompts) or a comparable first-step loss does not agree.
Writes bench/results/distill_vs_trl.json (_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import common

SCRIPT = Path(__file__).resolve()
MODEL = "smollm2-135m-instruct"
DATA = "builtin:reasoning-gym/basic_arithmetic?n=64&seed=0&min_terms=2&max_terms=2&min_digits=1&max_digits=2"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SIDES = ("polm", "trl")
MODES = {"offpolicy": 0.0, "onpolicy": 1.0}   # mode -> λ


@dataclass
class Settings:
    model: str = MODEL               # the student: an embedded name or a model directory
    teacher: str | None = None       # a model directory; None: the student's weights + seeded noise (built by the parent)
    teacher_noise: float = 0.05      # noise std as a fraction of each matrix's std (JSD_0.5 ~ 0.04 per token)
    data: str = DATA
    steps: int = 4
    micro_batch_size: int = 4        # examples (off-policy) or prompts (on-policy) per optimizer step
    beta: float = 0.5
    max_new_tokens: int = 24         # the data's answers are 13-25 tokens (with <|im_end|>)
    temperature: float = 1.0         # sampling temperature (the divergence is at τ = 1 on both sides)
    lr: float = 1e-4
    lora_r: int = 16
    max_grad_norm: float = 1.0
    max_length: int = 256
    loss_chunk_size: int = 256       # polm's default: rows of [*, V] logits at a time
    seed: int = 0
    device: str = "cpu"
    repeats: int = 3
    warmup: bool = True              # one 1-step trial per side before the first mode's rounds, discarded
    threads: int | None = None       # torch intra-op threads per worker (None: one per core)

    @property
    def loss_rtol(self) -> float:
        """Relative tolerance of the first-step loss: fp32 differs only in summation order and chunking
        (measured ~1e-6); bf16 autocast on CUDA rounds the logits of each side differently."""
        return 1e-4 if common.precision_for(self.device) == "fp32" else 2e-2


QUICK = {"steps": 2, "micro_batch_size": 2, "max_new_tokens": 8, "repeats": 1, "warmup": False}


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


# --- the parent: teacher, examples, order ------------------------------------------------------------

def build_teacher(s: Settings, out: Path) -> str:
    """SmolLM2 + N(0, (noise x std(W))²) on every non-embedding matrix, seeded; saved as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polm.assets import resolve_model

    src = resolve_model(s.model)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(s.seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * s.teacher_noise)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


def polm_overrides(s: Settings, lmbda: float, steps: int, teacher: str, out: Path) -> list[str]:
    return [
        f"output_dir={out}", "overwrite=true", f"model.name={s.model}", f"model.device={s.device}", "model.dtype=fp32",
        "model.gradient_checkpointing=false", "method=lora", f"lora.r={s.lora_r}", f"lora.alpha={2 * s.lora_r}",
        "lora.dropout=0.0", f"lora.target_modules=[{','.join(TARGETS)}]", f"teacher.model={teacher}",
        "teacher.dtype=fp32", f"data.train={s.data}", f"data.max_length={s.max_length}", "loss=jsd",
        f"loss_options.beta={s.beta}", "temperature=1.0", "ce_weight=0.0", f"lmbda={lmbda}",
        f"loss_chunk_size={s.loss_chunk_size}", f"rollout.prompts_per_rollout={s.micro_batch_size}",
        "rollout.group_size=1", f"rollout.max_new_tokens={s.max_new_tokens}",
        f"rollout.min_new_tokens={s.max_new_tokens}", f"rollout.temperature={s.temperature}", "rollout.top_p=1.0",
        "rollout.top_k=0", f"train.max_steps={steps}", f"train.micro_batch_size={s.micro_batch_size}",
        "train.grad_accum=1", f"train.lr={s.lr}", "train.schedule=constant", "train.warmup_steps=0",
        "train.weight_decay=0.0", "train.adam_betas=[0.9,0.999]", "train.adam_eps=1e-8",
        f"train.max_grad_norm={s.max_grad_norm}", f"train.precision={common.precision_for(s.device)}",
        f"train.seed={s.seed}", "train.log_every=1", "train.save_every=0", "train.resume=false",
        "train.progress=false", "train.tensorboard=false"]


def trl_rows(s: Settings, steps: int, teacher: str) -> list[dict]:
    """polm's encoded examples in the order polm's seeded BatchStream serves them (its RolloutStream draws
    prompts the same way), pre-tokenized for TRL's DataCollatorForChatML: input_ids up to the last target
    token and completion_mask (1 from the first target on), which it uses as they are; it also reads a
    `prompt` text before looking at input_ids (only to re-tokenize raw rows), given as the decoded prompt.
    Targets must be one contiguous span."""
    from polm.config import load_config
    from polm.models import load_tokenizer
    from polm.ops import IGNORE_INDEX
    from polm.recipes.distill import DistillConfig, prepare_data
    from polm.train.batches import BatchStream

    cfg = load_config(DistillConfig, None, polm_overrides(s, 0.0, steps, teacher, Path("unused")))
    tokenizer = load_tokenizer(cfg.model.name)
    examples, _ = prepare_data(cfg, tokenizer)
    stream = BatchStream(examples, list, s.micro_batch_size, seed=s.seed)
    rows = []
    for ex in (ex for _ in range(steps) for ex in next(stream)):
        marks = [i for i, label in enumerate(ex["labels"]) if label != IGNORE_INDEX]
        if marks != list(range(marks[0], marks[-1] + 1)):
            raise SystemExit("an example's targets are not one contiguous span: TRL's collator cannot mask it alike")
        ids = ex["input_ids"][:marks[-1] + 1]
        rows.append({"prompt": tokenizer.decode(ids[:marks[0]]), "input_ids": ids,
                     "completion_mask": [int(i >= marks[0]) for i in range(len(ids))]})
    return rows


# --- workers (one fresh process per trial) -----------------------------------------------------------

def scored(labels) -> dict:
    """Per row of a batch's labels (shifted: labels[:, 1:]), the target token ids: count and digests."""
    rows = [[t for t in row if t != -100] for row in labels.tolist()]
    flat = sorted(t for row in rows for t in row)
    return {"targets": len(flat), "target_ids_sha": digest(flat)}


def sample_record(pairs: list[tuple[list[int], list[int]]]) -> dict:
    """What one generation produced: generated tokens, prompts digest, digest of each (prompt, completion)."""
    pairs = sorted((list(p), list(c)) for p, c in pairs)
    return {"generated_tokens": sum(len(c) for _, c in pairs), "prompts_sha": digest([p for p, _ in pairs]),
            "row_sha": [digest(pc) for pc in pairs]}


def polm_worker(s: Settings, lmbda: float, steps: int, teacher: str, out: Path) -> dict:
    """polm's `run_distill` with a clock on its batch stream and generator, and PeakRss around its loop."""
    import torch

    from polm.config import load_config
    from polm.recipes import distill
    from polm.rollout.hf import HFGenerator
    from polm.train.batches import BatchStream
    from polm.train.metrics import read_metrics

    clock, mem, batches, gens, eos = common.StepClock(), common.PeakRss(), [], [], []
    stream_cls = distill.RolloutStream if lmbda > 0 else BatchStream   # patch one: RolloutStream draws via BatchStream
    next_batch, generate, init, train = stream_cls.__next__, HFGenerator.generate, HFGenerator.__init__, distill.train

    def next_step(self):                     # grad_accum = 1: every batch starts an optimizer step
        clock.mark()
        batch = next_batch(self)
        batches.append(scored(batch["labels"][:, 1:]))
        return batch

    def timed_generate(self, prompt_ids, *args, **kwargs):
        wall = time.perf_counter()
        completions = generate(self, prompt_ids, *args, **kwargs)
        gens.append({"generation_s": time.perf_counter() - wall,
                     **sample_record([(prompt_ids[c.prompt_index], c.token_ids) for c in completions])})
        return completions

    def init_counted(self, *args, **kwargs):
        init(self, *args, **kwargs)
        eos.extend(self.eos_ids.tolist())

    def measured_train(*args, **kwargs):
        with mem:
            result = train(*args, **kwargs)
            clock.finish()
        return result

    stream_cls.__next__, HFGenerator.generate, HFGenerator.__init__ = next_step, timed_generate, init_counted
    distill.train = measured_train
    cfg = load_config(distill.DistillConfig, None, polm_overrides(s, lmbda, steps, teacher, out))
    torch.manual_seed(s.seed)
    result = distill.run_distill(cfg)
    logged = [r for r in read_metrics(out) if "loss" in r]
    return {"steps": per_step(clock, batches, gens), "losses": result["losses"],
            "logged_targets": [r["target_tokens"] for r in logged], "eos_ids": sorted(set(eos)),
            "train_rss": mem.as_dict(), "cuda_peak_mib": common.cuda_peak_mib(s.device)}


def per_step(clock: common.StepClock, batches: list[dict], gens: list[dict]) -> list[dict]:
    d = clock.as_dict()
    rows = []
    for k, (wall, cpu, batch) in enumerate(zip(d["step_wall_s"], d["step_cpu_s"], batches)):
        gen = gens[k] if k < len(gens) else {"generation_s": 0.0}
        rows.append({"step_s": wall, "step_cpu_s": cpu, **batch, **gen})
    return rows


def trl_options(s: Settings, lmbda: float, steps: int) -> dict[str, dict]:
    """Every GKDConfig option this bench sets, with why (trl 1.16): {name: {"value", "why"}}."""
    cuda = s.device.startswith("cuda")
    opts = {
        "lmbda": (lmbda, "same λ: random.random() <= λ picks on-policy per step (λ 0: never, 1: always)"),
        "beta": (s.beta, "same β (polm loss=jsd loss_options.beta)"),
        "temperature": (s.temperature, "sampling temperature only (polm rollout.temperature); compute_loss "
                        "calls generalized_jsd_loss at its default τ = 1, so polm runs temperature=1.0"),
        "max_new_tokens": (s.max_new_tokens, "polm rollout.max_new_tokens (min_new_tokens set alike, see JSON)"),
        "seq_kd": (False, "default: no teacher generation"),
        "disable_dropout": (True, "default; SmolLM2 has no dropout and LoRA dropout is 0"),
        "per_device_train_batch_size": (s.micro_batch_size, "polm train.micro_batch_size (= rollout prompts)"),
        "gradient_accumulation_steps": (1, "one forward + backward per optimizer step, as polm"),
        "max_length": (s.max_length, "DataCollatorForChatML's cut; the examples are shorter (polm data.max_length)"),
        "train_sampling_strategy": ("sequential", "the parent gives the examples in polm's order"),
        "learning_rate": (s.lr, "same"), "lr_scheduler_type": ("constant", "same"), "warmup_steps": (0, "same"),
        "weight_decay": (0.0, "same"), "adam_beta1": (0.9, "same"), "adam_beta2": (0.999, "same"),
        "adam_epsilon": (1e-8, "same"), "max_grad_norm": (s.max_grad_norm, "same clipping"),
        "bf16": (cuda, "SFTConfig defaults bf16=True (also on CPU); polm trains fp32 on CPU, bf16 autocast on CUDA"),
        "gradient_checkpointing": (False, "SFTConfig defaults it on (and then GKD generates without a KV cache); "
                                   "polm's default is off"),
        "model_init_kwargs": ({"dtype": "float32"}, "fp32 weights, as polm model.dtype=fp32"),
        "use_cpu": (not cuda, "run on the CPU when --device cpu"),
        "use_liger_kernel": (False, "default (Triton kernels, GPU only)"),
        "padding_free": (False, "default; GKD's compute_loss passes no position_ids, so padding-free is not an option"),
        "dataloader_num_workers": (0, "default"), "seed": (s.seed, "same seed"), "max_steps": (steps, "same steps"),
        "logging_steps": (1, "a loss per step"), "save_strategy": ("no", "no checkpoints (polm save_every=0)"),
        "eval_strategy": ("no", "no eval"), "report_to": ("none", "no loggers"), "disable_tqdm": (True, "no bar"),
    }
    return {name: {"value": value, "why": why} for name, (value, why) in opts.items()}


def trl_worker(s: Settings, lmbda: float, steps: int, teacher: str, out: Path, rows_path: Path) -> dict:
    """GKDTrainer.train() on the parent's rows, with wrappers recording what its loss and generation saw."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from polm.assets import resolve_model

    clock, mem, batches, gens, losses = common.StepClock(), common.PeakRss(), [], [], []
    jsd, gen_outputs = GKDTrainer.generalized_jsd_loss, GKDTrainer.generate_on_policy_outputs

    def recorded_jsd(student_logits, teacher_logits, labels=None, **kwargs):
        """TRL's loss, called once and unchanged; what it divided by is recorded beside it."""
        loss = jsd(student_logits, teacher_logits, labels=labels, **kwargs)
        count = int((labels != -100).sum())
        items = kwargs.get("num_items_in_batch")
        denom = count if items is None else int(items)     # batchmean divides by the mask count
        if not losses:
            losses.append({"returned": float(loss), "count": count, "denominator": denom,
                           "num_items_in_batch": None if items is None else int(items),
                           "temperature": kwargs.get("temperature", 1.0), "beta": kwargs.get("beta")})
        batches.append(scored(labels))
        return loss

    def seeded_generate(model, inputs, generation_config):
        torch.manual_seed(s.seed + len(gens))    # polm's rollout seed: train.seed + rollout index
        wall = time.perf_counter()
        ids, attn, labels = gen_outputs(model, inputs, generation_config)
        width = inputs["prompts"].shape[1]
        prompts = [row[m.bool()].tolist() for row, m in zip(inputs["prompts"], inputs["prompt_attention_mask"])]
        completions = [row[width:][m.bool()].tolist() for row, m in zip(ids, attn[:, width:])]
        gens.append({"generation_s": time.perf_counter() - wall, **sample_record(list(zip(prompts, completions)))})
        return ids, attn, labels

    GKDTrainer.generalized_jsd_loss = staticmethod(recorded_jsd)
    GKDTrainer.generate_on_policy_outputs = staticmethod(seeded_generate)

    steps_clock = common.trainer_step_clock(clock, on_begin=mem.__enter__,   # PeakRss over the training alone
                                            on_end=lambda: mem.__exit__(None, None, None))
    rows = json.loads(rows_path.read_text())[:steps * s.micro_batch_size]
    options = trl_options(s, lmbda, steps)
    args = GKDConfig(output_dir=str(out), **{k: v["value"] for k, v in options.items()})
    model_dir = resolve_model(s.model)
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    peft = LoraConfig(r=s.lora_r, lora_alpha=2 * s.lora_r, lora_dropout=0.0, bias="none", target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    torch.manual_seed(s.seed)
    trainer = GKDTrainer(model=model_dir, teacher_model=teacher_model, args=args,
                         train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=peft,
                         callbacks=[steps_clock])
    # fixed-length completions, as polm's rollout.min_new_tokens: EOS is blocked until max_new_tokens
    trainer.generation_config.min_new_tokens = s.max_new_tokens
    trainer.generation_kwargs["min_new_tokens"] = s.max_new_tokens
    trainer.train()
    a = trainer.args
    eos = trainer.generation_config.eos_token_id
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    return {"steps": per_step(clock, batches, gens), "first_loss": losses[0] if losses else None,
            "logged_losses": logged, "eos_ids": sorted(eos if isinstance(eos, list) else [eos]),
            "train_rss": mem.as_dict(), "cuda_peak_mib": common.cuda_peak_mib(s.device),
            "resolved_args": {"bf16": a.bf16, "gradient_checkpointing": a.gradient_checkpointing,
                              "optim": str(getattr(a.optim, "value", a.optim)),
                              "mixed_precision": str(trainer.accelerator.mixed_precision),
                              "model_dtype": str(next(trainer.model.parameters()).dtype),
                              "generation_config": {k: getattr(trainer.generation_config, k) for k in
                                                    ("do_sample", "temperature", "top_k", "top_p", "max_new_tokens",
                                                     "min_new_tokens", "use_cache")}}}


def worker(spec: dict) -> dict:
    s = Settings(**spec["settings"])
    common.set_threads(s.threads)
    load_start, lmbda = common.load_avg_1m(), MODES[spec["mode"]]
    with tempfile.TemporaryDirectory(prefix="polm-distill-bench-") as tmp:
        run = Path(tmp) / "run"
        result = (polm_worker(s, lmbda, spec["steps"], spec["teacher"], run) if spec["side"] == "polm"
                  else trl_worker(s, lmbda, spec["steps"], spec["teacher"], run, Path(spec["rows_path"])))
    return {**result, "side": spec["side"], "mode": spec["mode"], "load_avg_1m_start": load_start,
            "load_avg_1m_end": common.load_avg_1m()}


# --- summary (parent) --------------------------------------------------------------------------------

FIGURES = ("step_s", "step_cpu_s", "generation_s", "training_s", "train_peak_rss_mib", "train_peak_delta_mib",
           "worker_peak_rss_mib", "targets_per_step")


def trial_figures(trial: dict, device: str) -> dict:
    """Medians over steps 2..N (all steps if there is one); training_s = step_s - generation_s per step."""
    steps = trial["steps"][1:] or trial["steps"]
    cuda = device.startswith("cuda")
    return {"step_s": common.median([st["step_s"] for st in steps]),
            "step_cpu_s": common.median([st["step_cpu_s"] for st in steps]),
            "generation_s": common.median([st["generation_s"] for st in steps]),
            "training_s": common.median([st["step_s"] - st["generation_s"] for st in steps]),
            "train_peak_rss_mib": trial["cuda_peak_mib"] if cuda else trial["train_rss"]["peak_mib"],
            "train_peak_delta_mib": float("nan") if cuda else trial["train_rss"]["peak_delta_mib"],
            "worker_peak_rss_mib": trial["peak_rss_mib"],
            "targets_per_step": common.median([st["targets"] for st in steps])}


def summarize_side(trials: list[dict], device: str) -> dict:
    figures = [trial_figures(t, device) for t in trials]
    return ({key: common.median([f[key] for f in figures]) for key in FIGURES}
            | {"spread": {key: common.spread([f[key] for f in figures]) for key in FIGURES},
               "trials": [{**f, "load_avg_1m_start": t["load_avg_1m_start"], "load_avg_1m_end": t["load_avg_1m_end"],
                           "train_rss": t["train_rss"], "steps": t["steps"]} for f, t in zip(figures, trials)]})


def check_same_work(rounds: dict[str, list[dict]], s: Settings, mode: str) -> dict:
    """Every trial of both sides scored the same number of targets per step; off-policy the same target ids
    per step; on-policy the same prompts per step and micro_batch x max_new_tokens generated tokens."""
    problems, onpolicy = [], MODES[mode] > 0
    reference = rounds["polm"][0]["steps"]
    for side, trials in rounds.items():
        for i, t in enumerate(trials):
            st = t["steps"]
            if len(st) != len(reference):
                problems.append(f"{side} trial {i + 1}: {len(st)} steps recorded, polm {len(reference)}")
            for k, (a, b) in enumerate(zip(st, reference)):
                if a["targets"] != b["targets"]:
                    problems.append(f"{side} trial {i + 1} step {k + 1}: {a['targets']} targets, polm {b['targets']}")
                if not onpolicy and a["target_ids_sha"] != b["target_ids_sha"]:
                    problems.append(f"{side} trial {i + 1} step {k + 1}: scored token ids differ from polm's")
                if onpolicy and a["prompts_sha"] != b["prompts_sha"]:
                    problems.append(f"{side} trial {i + 1} step {k + 1}: prompts differ from polm's")
                if onpolicy and a["generated_tokens"] != s.micro_batch_size * s.max_new_tokens:
                    problems.append(f"{side} trial {i + 1} step {k + 1}: {a['generated_tokens']} generated tokens")
    return {"ok": not problems, "problems": problems,
            "targets_per_step": [st["targets"] for st in reference]}


def check_first_loss(rounds: dict[str, list[dict]], s: Settings, mode: str) -> dict:
    """polm's first logged loss vs TRL's masked JSD sum / count of step 1, in the first round's trials.
    On-policy only when both sampled identical (prompt, completion) rows at step 1."""
    polm, trl = rounds["polm"][0], rounds["trl"][0]
    first = trl["first_loss"]   # TRL returned masked sum / denominator; per token = returned x denominator / count
    ours, theirs = polm["losses"][0], first["returned"] * first["denominator"] / first["count"]
    out = {"polm": ours, "trl_per_token_mean": theirs, "trl_returned": first["returned"],
           "trl_denominator": first["denominator"], "trl_count": first["count"], "trl_beta": first["beta"],
           "trl_logged": trl["logged_losses"][0] if trl["logged_losses"] else None,
           "rel_diff": abs(ours - theirs) / max(abs(theirs), 1e-12), "rtol": s.loss_rtol}
    if MODES[mode] > 0:
        a, b = polm["steps"][0]["row_sha"], trl["steps"][0]["row_sha"]
        same = sum(x == y for x, y in zip(a, b))
        out["identical_sampled_rows"] = f"{same}/{len(a)}"
        if a != b:
            out.update(comparable=False, agree=None, why="the sampled completions differ at step 1: the two losses "
                       "score different tokens, so they are not compared")
            return out
    out.update(comparable=True, agree=out["rel_diff"] <= s.loss_rtol)
    return out


def bench_mode(mode: str, s: Settings, base: dict, warmup: bool) -> dict:
    """Rounds of one mode (after a warm-up trial per side when `warmup`), summarised and checked."""
    spec = {**base, "mode": mode}
    rounds, _ = common.alternate_workers(
        SCRIPT, {side: {**spec, "side": side, "steps": s.steps} for side in SIDES}, s.repeats,
        {side: {**spec, "side": side, "steps": 1} for side in SIDES} if warmup else None,
        log=lambda m: print(f"  [{mode}] {m}", flush=True), timeout_s=3600)
    sides = {side: summarize_side(trials, s.device) for side, trials in rounds.items()}
    p, t = sides["polm"], sides["trl"]
    ratios = {key: p[key] / t[key] if t[key] else None
              for key in ("step_s", "step_cpu_s", "generation_s", "training_s", "train_peak_rss_mib",
                          "train_peak_delta_mib", "worker_peak_rss_mib")}
    ratios["step_s_per_round"] = common.spread([a["step_s"] / b["step_s"] for a, b in zip(p["trials"], t["trials"])])
    loss = check_first_loss(rounds, s, mode)
    return {"lmbda": MODES[mode], "sides": sides, "ratios": ratios, "same_work": check_same_work(rounds, s, mode),
            "first_step_loss": loss, "eos_ids": {side: rounds[side][0]["eos_ids"] for side in SIDES},
            "trl_resolved_args": rounds["trl"][0]["resolved_args"],
            "goals": {"step_time_le_0.7x": ratios["step_s"] <= 0.7,
                      "peak_memory_le_0.8x": ratios["train_peak_rss_mib"] <= 0.8,
                      "first_step_loss_agrees": loss["agree"]}}


def print_table(results: dict, device: str) -> None:
    mem = "peak CUDA MiB (training)" if device.startswith("cuda") else "peak RSS MiB (training steps)"
    labels = [("s/step", "step_s"), ("CPU s/step", "step_cpu_s"), ("generation s/step", "generation_s"),
              ("training s/step", "training_s"), (mem, "train_peak_rss_mib"),
              ("peak RSS MiB added by training", "train_peak_delta_mib"),
              ("peak RSS MiB (whole worker)", "worker_peak_rss_mib"), ("target tokens/step", "targets_per_step")]
    rows = []
    for mode, r in results.items():
        sides = r["sides"]
        for label, key in labels:
            cells = [f"{sides[x][key]:.4g} ({sides[x]['spread'][key]['min']:.3g}-{sides[x]['spread'][key]['max']:.3g})"
                     for x in SIDES]
            ratio = r["ratios"].get(key)
            rows.append([mode, label, *cells, f"{ratio:.2f}" if ratio else "-"])
        loss = r["first_step_loss"]
        rows.append([mode, "first-step loss", f"{loss['polm']:.6g}", f"{loss['trl_per_token_mean']:.6g}",
                     f"{loss['polm'] / loss['trl_per_token_mean']:.6f}" if loss["trl_per_token_mean"] else "-"])
    print(common.format_table(["mode", "figure (median, min-max)", "polm", "trl", "polm/trl"], rows))
    for mode, r in results.items():
        loss, work = r["first_step_loss"], r["same_work"]
        verdict = ("not comparable: " + loss["why"]) if not loss["comparable"] else \
            f"rel. diff {loss['rel_diff']:.1e} (tolerance {loss['rtol']:.0e}) -> {'agree' if loss['agree'] else 'DIFFER'}"
        sampled = f", identical sampled rows {loss['identical_sampled_rows']}" if "identical_sampled_rows" in loss else ""
        print(f"{mode}: first-step loss {verdict}{sampled}; same work: "
              + ("yes" if work["ok"] else "NO: " + "; ".join(work["problems"][:5])))
        print(f"{mode}: goals " + ", ".join(f"{k} {'n/a' if v is None else 'yes' if v else 'NO'}"
                                            for k, v in r["goals"].items()))


def run_benchmark(s: Settings, modes: list[str], quick: bool) -> dict:
    machine = common.machine_description(s.device, ("torch", "transformers", "peft", "trl", "accelerate"))
    common.set_threads(s.threads)
    peak = common.matmul_peak_flops(s.device)
    print(f"{machine['cpu']} ({machine['cores']} cores, load {machine['load_avg_1m_at_start']}); matmul "
          f"{peak['flops_per_s'] / 1e9:.0f} GFLOP/s", flush=True)
    started, results = time.perf_counter(), {}
    with tempfile.TemporaryDirectory(prefix="polm-distill-bench-data-") as tmp:
        teacher = s.teacher or build_teacher(s, Path(tmp) / "teacher")
        rows_path = Path(tmp) / "rows.json"
        rows_path.write_text(json.dumps(trl_rows(s, s.steps, teacher)))
        base = {"settings": asdict(s), "teacher": teacher, "rows_path": str(rows_path)}
        for i, mode in enumerate(modes):   # a warm-up brings code and weights into the page cache: once
            results[mode] = bench_mode(mode, s, base, warmup=s.warmup and i == 0)
    ok = all(r["same_work"]["ok"] and r["first_step_loss"]["agree"] is not False for r in results.values())
    return {
        "benchmark": "distill_vs_trl", "command": common.command_line(SCRIPT), "quick": quick, "settings": asdict(s),
        "teacher": s.teacher or f"{s.model} + seeded noise {s.teacher_noise} x std on every non-embedding matrix",
        "machine": machine, "load_avg_1m_at_end": common.load_avg_1m(), "wall_s": round(time.perf_counter() - started, 1),
        "matmul_peak": {"start": peak, "end": common.matmul_peak_flops(s.device)},
        "order": ([f"warm-up ({modes[0]}): polm, trl (1 step each)"] if s.warmup else [])
                 + [f"{r + 1}:{side}" for r, side in common.alternation_order(SIDES, s.repeats)],
        "trl_options": {mode: trl_options(s, MODES[mode], s.steps) for mode in modes},
        "trl_harness": {"min_new_tokens": s.max_new_tokens,
                        "generation_seed": "torch.manual_seed(train.seed + rollout index) before each generate",
                        "first_loss": "generalized_jsd_loss wrapped (called once, unchanged): its returned value, its "
                                      "denominator (num_items_in_batch, else the mask count) and the mask count at step 1"},
        "trl_notes": ["not settings, TRL's code: GKD's compute_loss materialises the full [B, T, V] logits of the "
                      "student and the teacher (polm: chunks of loss_chunk_size rows of target tokens only) and calls "
                      "empty_cache() after every loss (torch.cuda.empty_cache on CUDA, nothing on CPU)",
                      "on-policy, the loss TRL returns divides by num_items_in_batch, counted on the dataset labels "
                      "before generation replaced them: trl_returned x trl_denominator / trl_count is its per-token "
                      "mean"],
        "passes_per_step": "both: (on-policy: one sampled generation with a KV cache,) one student forward + "
                           "backward and one teacher forward of the step's sequences, one AdamW step",
        "results": results, "ok": ok}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 steps of 2 examples, 8 new tokens, 1 round, no warm-up")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--modes", default="offpolicy,onpolicy", help="comma-separated: offpolicy, onpolicy")
    parser.add_argument("--steps", type=int, help="optimizer steps per trial (>= 2; step 1 is not timed)")
    parser.add_argument("--repeats", type=int, help="measured rounds per side and mode")
    parser.add_argument("--teacher", help="a teacher model directory (default: the student + seeded noise)")
    common.add_output_args(parser, "distill_vs_trl")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if common.serve_worker(args, worker, common.HF_WORKER_ENV_NO_TQDM):
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        raise SystemExit(f"unknown mode(s) {unknown}: use {', '.join(MODES)}")
    s = common.with_flags(Settings(device=args.device, threads=args.threads, teacher=args.teacher),
                          QUICK if args.quick else None, steps=args.steps, repeats=args.repeats)
    if s.steps < 2:
        raise SystemExit("--steps must be at least 2 (step 1 is not timed)")
    report = run_benchmark(s, modes, args.quick)
    print_table(report["results"], s.device)
    common.write_report(common.results_path("distill_vs_trl", args.quick, args.out), report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
