"""polm SFT vs TRL `SFTTrainer` on the embedded SmolLM2-135M-Instruct, LoRA and full fine-tuning.

    python bench/sft_vs_trl.py --quick              # ~3 minutes on 2 CPU cores
    python bench/sft_vs_trl.py                      # the recorded run (docs/performance.md)
    python bench/sft_vs_trl.py --threads 1          # when other processes oversubscribe the cores
    python bench/sft_vs_trl.py --device cuda
    python bench/sft_vs_trl.py --quick --modes full --polm-optimizer-impl for-loop   # polm's AdamW before fused

Both sides train on the SAME token sequences: a mix of reasoning-gym arithmetic, GSM8K worked
answers and Wikipedia text (mixed lengths), encoded once by polm's `encode_records` and handed to
TRL pre-tokenized (`input_ids` + `labels`), in the same order, with the same micro-batches packed
padding-free into one row on both sides, the same optimizer, schedule, clipping and LoRA targets.
polm runs its SFT recipe's pieces (load_model, attach_adapter, pack_collate, causal_lm_loss, the
shared loop over a BatchStream); TRL runs `SFTTrainer.train()`. Each trial is a fresh process (its
peak RSS is that trial's memory); polm and TRL alternate after a warm-up and the medians are
reported. Throughput counts TARGET tokens (loss-bearing, after the shift) over steps 2..N (step 1
pays one-off allocation). Writes bench/results/sft_vs_trl.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import common

SCRIPT = Path(__file__).resolve()
MODEL = "smollm2-135m-instruct"
SOURCES = (  # (builtin reference, share of the mix): short arithmetic, mid-length GSM8K, variable wiki text
    ("builtin:reasoning-gym/basic_arithmetic?seed=11", 0.25),
    ("builtin:reasoning-gym/chain_sum?seed=11", 0.15),
    ("builtin:gsm8k-test?seed=11", 0.3),
    ("builtin:wiki-summaries?seed=11", 0.3),
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Settings:
    """Everything both sides share; the JSON records it as is."""
    steps: int = 3                   # optimizer steps per trial; throughput is measured over steps 2..N
    micro_batch_size: int = 2        # examples per micro-batch, packed into one row on both sides
    grad_accum: int = 2
    max_length: int = 512
    lr: dict = field(default_factory=lambda: {"lora": 2e-4, "full": 2e-5})
    weight_decay: float = 0.01
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    polm_optimizer_impl: str = "auto"  # polm's train.optimizer_impl; TRL keeps its default optimizer
    polm_packed_attention: str = "segment"   # polm's data.packed_attention: SDPA per packed example, or one block mask
    schedule: str = "cosine"
    warmup_steps: int = 0            # a short run: every step trains, so the whole loss trajectory compares updates
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_targets: list = field(default_factory=lambda: list(TARGETS))
    seed: int = 0
    loss_chunk_size: int = 1024      # polm's chunked cross-entropy (its SFT default)
    trl_padding_free: bool = True    # TRL's documented fast option: flatten a micro-batch into one row
    repeats: int = 3
    warmup: bool = True              # one short warm-up trial per side before the first mode's rounds
    warmup_steps_per_trial: int = 1  # a warm-up only brings code and weights into the page cache

    @property
    def examples_needed(self) -> int:
        return self.steps * self.grad_accum * self.micro_batch_size


QUICK = {"steps": 3, "grad_accum": 1, "repeats": 1}


# --- data (parent process) ---------------------------------------------------------------------------

def build_examples(settings: Settings, tokenizer) -> tuple[list[dict], list[dict]]:
    """(encoded examples in training order, raw records) — the mixed-length set both sides train on."""
    from polm.data.builtin import load_builtin
    from polm.data.templating import encode_records

    need = settings.examples_needed
    examples: list[dict] = []
    raw: list[dict] = []
    for ref, share in SOURCES:
        n = max(1, round(need * share)) + 1
        records = load_builtin(f"{ref}&n={n}")
        encoded, _ = encode_records(records, tokenizer, max_length=settings.max_length)
        source = ref.split("?")[0].removeprefix("builtin:")
        examples += [{**e, "source": source} for e in encoded]
        raw += [{**r, "source": source} for r in records[:4]]
    random.Random(settings.seed).shuffle(examples)
    return examples[:need], raw


def target_count(example: dict) -> int:
    """Loss-bearing tokens of one example: labels[1:] != -100 (position 0 is never predicted)."""
    return sum(label != -100 for label in example["labels"][1:])


def per_step_tokens(examples: list[dict], settings: Settings) -> list[dict]:
    """Input tokens, target tokens and Σ len² (for attention FLOPs) of every optimizer step."""
    per = settings.micro_batch_size * settings.grad_accum
    out = []
    for s in range(settings.steps):
        chunk = examples[s * per:(s + 1) * per]
        out.append({"tokens": sum(len(e["input_ids"]) for e in chunk), "targets": sum(map(target_count, chunk)),
                    "len_sq": sum(len(e["input_ids"]) ** 2 for e in chunk)})
    return out


# --- workers (one fresh process per trial) -----------------------------------------------------------

def _load_examples(spec: dict) -> list[dict]:
    return json.loads(Path(spec["examples_path"]).read_text())


def _polm_train_config(spec: dict, s: Settings):
    from polm.train.config import TrainConfig

    return TrainConfig(max_steps=spec["steps"], micro_batch_size=s.micro_batch_size, grad_accum=s.grad_accum,
                       lr=s.lr[spec["mode"]], weight_decay=s.weight_decay, adam_betas=list(s.adam_betas),
                       adam_eps=s.adam_eps, optimizer_impl=s.polm_optimizer_impl, schedule=s.schedule,
                       warmup_steps=s.warmup_steps,
                       max_grad_norm=s.max_grad_norm, precision=common.precision_for(spec["device"]), seed=s.seed,
                       log_every=1, progress=False, tensorboard=False, resume=False)


def run_polm(spec: dict) -> dict:
    """polm's SFT path: polm loaders + adapter, pack_collate, causal_lm_loss (chunked CE), the shared loop."""
    import torch

    from polm.data.collate import pack_collate
    from polm.models import LoraConfig, ModelConfig, attach_adapter, load_model
    from polm.models.attention import packed_attention
    from polm.ops.logprobs import causal_lm_loss
    from polm.train.batches import BatchStream
    from polm.train.loop import StepOutput, train
    from polm.train.metrics import read_metrics

    s, device = Settings(**spec["settings"]), spec["device"]
    examples = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in _load_examples(spec)]
    torch.manual_seed(s.seed)
    model = load_model(ModelConfig(name=spec["model_dir"], dtype="fp32", device=device))
    if spec["mode"] == "lora":
        model = attach_adapter(model, LoraConfig(r=s.lora_r, alpha=s.lora_alpha, dropout=0.0,
                                                 target_modules=list(s.lora_targets)))

    clock, calls = common.StepClock(), [0]

    def step(batch: dict) -> StepOutput:
        if calls[0] % s.grad_accum == 0:  # the first micro-batch of an optimizer step
            clock.mark()
        calls[0] += 1
        loss_sum, count = causal_lm_loss(model, batch, chunk_size=s.loss_chunk_size)
        return StepOutput(loss_sum=loss_sum, count=count)

    # the order is fixed by the parent (shuffle=False), so TRL's sequential sampler sees the same micro-batches
    batches = BatchStream(examples, pack_collate, s.micro_batch_size, seed=s.seed, shuffle=False)
    rss_start = common.peak_rss_mib()
    with tempfile.TemporaryDirectory(prefix="polm-bench-run-") as run_dir:
        with packed_attention(model, s.polm_packed_attention):
            train(model=model, step_fn=step, batches=batches, cfg=_polm_train_config(spec, s), run_dir=Path(run_dir))
        clock.finish()
        records = [r for r in read_metrics(Path(run_dir)) if "loss" in r]
    return {"losses": [r["loss"] for r in records], "grad_norms": [r["grad_norm"] for r in records],
            "tokens": [r["tokens"] for r in records], "targets": [r["target_tokens"] for r in records],
            "rss_at_train_start_mib": rss_start, "cuda_peak_mib": common.cuda_peak_mib(device), **clock.as_dict(),
            **common.param_counts(model)}


def _trl_args(spec: dict, s: Settings, out_dir: str):
    from trl import SFTConfig

    device = spec["device"]
    return SFTConfig(
        output_dir=out_dir, max_steps=spec["steps"], per_device_train_batch_size=s.micro_batch_size,
        gradient_accumulation_steps=s.grad_accum, learning_rate=s.lr[spec["mode"]], weight_decay=s.weight_decay,
        adam_beta1=s.adam_betas[0], adam_beta2=s.adam_betas[1], adam_epsilon=s.adam_eps,
        lr_scheduler_type=s.schedule, warmup_steps=s.warmup_steps, max_grad_norm=s.max_grad_norm,
        bf16=common.precision_for(device) == "bf16", use_cpu=not device.startswith("cuda"),
        # SFTConfig turns gradient checkpointing on by default; polm's SFT default is off, and the two
        # must do the same work
        gradient_checkpointing=False, padding_free=s.trl_padding_free,
        max_length=None,  # the examples are already cut to max_length by polm's encoder
        train_sampling_strategy="sequential", seed=s.seed, data_seed=s.seed, logging_steps=1,
        save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )


def run_trl(spec: dict) -> dict:
    """TRL SFTTrainer on polm's pre-tokenized examples (labels given, so TRL keeps them as they are)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    s, device = Settings(**spec["settings"]), spec["device"]
    examples = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in _load_examples(spec)]
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).to(device)
    peft_config = (LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=0.0, bias="none",
                              target_modules=list(s.lora_targets), task_type="CAUSAL_LM")
                   if spec["mode"] == "lora" else None)

    clock = common.StepClock()
    steps_clock = common.trainer_step_clock(clock)

    with tempfile.TemporaryDirectory(prefix="polm-bench-trl-") as out_dir:
        torch.manual_seed(s.seed)  # the LoRA A matrices are drawn inside SFTTrainer(...), as polm's are in attach
        trainer = SFTTrainer(model=model, args=_trl_args(spec, s, out_dir), train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer, peft_config=peft_config, callbacks=[steps_clock])
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    cumulative = [int(h["num_tokens"]) for h in logs]
    return {"losses": [h["loss"] for h in logs], "grad_norms": [h["grad_norm"] for h in logs],
            "tokens": [b - a for a, b in zip([0, *cumulative], cumulative)],
            "rss_at_train_start_mib": steps_clock.rss_at_train_start_mib,
            "cuda_peak_mib": common.cuda_peak_mib(device), "optimizer": str(trainer.args.optim.value), **clock.as_dict(),
            **common.param_counts(trainer.model)}


def check_trl_tokenization(spec: dict) -> list[dict]:
    """Does TRL, given the RAW records, build the same ids and loss mask as polm? Per source.

    prompt/completion records go to TRL as conversational prompt/completion (completion-only loss is
    then TRL's default); text records as `text`. Returns counts of identical ids / labels and what differs.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from polm.data.templating import encode_records

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    by_source: dict[str, list[dict]] = {}
    for record in json.loads(Path(spec["raw_path"]).read_text()):
        by_source.setdefault(record["source"], []).append(record)
    report = []
    with tempfile.TemporaryDirectory(prefix="polm-bench-trl-") as out_dir:
        args = SFTConfig(output_dir=out_dir, use_cpu=True, bf16=False, report_to="none", max_length=None,
                         gradient_checkpointing=False)
        for source, records in by_source.items():
            ours, _ = encode_records(records, tokenizer, max_length=10**6)
            rows = ([{"text": r["text"]} for r in records] if "text" in records[0] else
                    [{"prompt": [{"role": "user", "content": r["prompt"]}],
                      "completion": [{"role": "assistant", "content": r["completion"]}]} for r in records])
            trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer)
            report.append({"source": source, "completion_only_loss": trainer.completion_only_loss,
                           **compare_encodings(ours, list(trainer.train_dataset), tokenizer)})
    return report


def compare_encodings(ours: list[dict], theirs: list[dict], tokenizer) -> dict:
    """How many examples have identical ids / labels, and which tokens only one side trains on."""
    pairs = list(zip(ours, theirs))
    trl_only = [t for a, b in pairs for t, x, y in zip(b["input_ids"], a["labels"], b["labels"]) if x == -100 != y]
    polm_only = [t for a, b in pairs for t, x, y in zip(a["input_ids"], a["labels"], b["labels"]) if y == -100 != x]
    return {"examples": len(pairs), "ids_identical": sum(a["input_ids"] == b["input_ids"] for a, b in pairs),
            "labels_identical": sum(a["labels"] == b["labels"] for a, b in pairs),
            "trl_only_targets": len(trl_only), "trl_only_tokens": sorted({tokenizer.decode([t]) for t in trl_only}),
            "polm_only_targets": len(polm_only), "polm_only_tokens": sorted({tokenizer.decode([t]) for t in polm_only})}


def worker(spec: dict) -> dict:
    common.set_threads(spec.get("threads"))
    result = {"side": spec["side"], "mode": spec["mode"]}
    if spec.get("raw_path"):
        result["tokenization_check"] = check_trl_tokenization(spec)
    result.update(run_polm(spec) if spec["side"] == "polm" else run_trl(spec))
    return result


# --- summary (parent) --------------------------------------------------------------------------------

def model_flops(trial: dict, steps: list[dict]) -> float:
    """Training FLOPs of steps 2..N: (6·P, or 4·frozen + 6·trainable for LoRA)·tokens + 6·L·d·Σ len².

    The attention term counts QKᵀ and AV over the causal half (2·d·T² forward per layer, ×3 with the backward).
    """
    frozen = trial["params"] - trial["trainable"]
    per_token = 4 * frozen + 6 * trial["trainable"]
    return sum(per_token * st["tokens"] + 6 * trial["layers"] * trial["hidden"] * st["len_sq"] for st in steps[1:])


def summarize_side(trials: list[dict], steps: list[dict], peak: dict, device: str) -> dict:
    """Medians over trials of: target tokens per wall second and per CPU second, step time, MFU (all
    over steps 2..N), peak memory (RSS of the worker on CPU, max allocated on CUDA) and the RSS the
    worker already had when training started (imports, weights).

    MFU on CPU = (model FLOPs / CPU seconds) / (matmul FLOPs / CPU second): the share of the cores the
    worker was granted, so other processes' load does not distort it; on CUDA it is wall-clock based.
    """
    cuda = device.startswith("cuda")
    targets = sum(st["targets"] for st in steps[1:])
    flops = model_flops(trials[0], steps)
    per_trial = []
    for t in trials:
        wall, cpu = sum(t["step_wall_s"][1:]), sum(t["step_cpu_s"][1:])
        mfu = flops / wall / peak["flops_per_s"] if cuda else flops / cpu / peak["flops_per_cpu_s"]
        per_trial.append({"target_tokens_per_s": targets / wall, "target_tokens_per_cpu_s": targets / cpu,
                          "step_s": common.median(t["step_wall_s"][1:]), "mfu": mfu,
                          "memory_mib": t["cuda_peak_mib"] if cuda else t["peak_rss_mib"],
                          "rss_at_train_start_mib": t["rss_at_train_start_mib"]})
    return {key: common.median([p[key] for p in per_trial]) for key in per_trial[0]} | {"trials": per_trial}


def check_same_work(polm: dict, trl: dict, steps: list[dict]) -> dict:
    """The two sides saw the same tokens (per-step counts) and agree on the loss trajectory."""
    expected = [st["tokens"] for st in steps]
    diffs = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(polm["losses"], trl["losses"])]
    return {"tokens_per_step_equal": polm["tokens"] == expected and trl["tokens"] == expected,
            "targets_per_step_equal": polm["targets"] == [st["targets"] for st in steps],
            "first_loss": {"polm": polm["losses"][0], "trl": trl["losses"][0]},
            "loss_rel_diff_first": diffs[0], "loss_rel_diff_max": max(diffs),
            "losses": {"polm": polm["losses"], "trl": trl["losses"]},
            "grad_norms": {"polm": polm["grad_norms"], "trl": trl["grad_norms"]}}


def bench_mode(mode: str, settings: Settings, base: dict, steps: list[dict], peak: dict, first: bool,
               raw_path: str) -> dict:
    """Before the first mode, warm up both sides (TRL's warm-up also checks TRL's own tokenization of
    the raw records); then alternate measured trials and compare them."""
    spec = {**base, "mode": mode, "steps": settings.steps}
    warm = {**spec, "steps": settings.warmup_steps_per_trial}
    run = common.run_worker
    trials = {side: (lambda side=side: run(SCRIPT, {**spec, "side": side})) for side in ("polm", "trl")}
    warmups = {"polm": lambda: run(SCRIPT, {**warm, "side": "polm"}),
               "trl": lambda: run(SCRIPT, {**warm, "side": "trl", "raw_path": raw_path})}
    rounds, warmed = common.alternate(trials, settings.repeats, warmups if settings.warmup and first else None,
                                      log=lambda m: print(f"  [{mode}] {m}", flush=True))
    device = base["device"]
    polm, trl = (summarize_side(rounds[k], steps, peak, device) for k in ("polm", "trl"))
    first_polm, first_trl = rounds["polm"][0], rounds["trl"][0]
    out = {"polm": polm, "trl": trl, "same_work": check_same_work(first_polm, first_trl, steps),
           "speedup": polm["target_tokens_per_s"] / trl["target_tokens_per_s"],
           "memory_ratio": polm["memory_mib"] / trl["memory_mib"], "trl_optimizer": first_trl["optimizer"],
           "params": first_polm["params"], "trainable": {"polm": first_polm["trainable"], "trl": first_trl["trainable"]}}
    if "tokenization_check" in warmed.get("trl", {}):
        out["tokenization_check"] = warmed["trl"]["tokenization_check"]
    return out


def print_table(results: dict, device: str) -> None:
    mem = "peak CUDA MiB" if device.startswith("cuda") else "peak RSS MiB"
    rows = []
    for mode, r in results.items():
        p, t = r["polm"], r["trl"]
        rows += [[mode, "target tok/s", p["target_tokens_per_s"], t["target_tokens_per_s"], r["speedup"]],
                 [mode, "target tok/CPU-s", p["target_tokens_per_cpu_s"], t["target_tokens_per_cpu_s"],
                  p["target_tokens_per_cpu_s"] / t["target_tokens_per_cpu_s"]],
                 [mode, "step time s", p["step_s"], t["step_s"], p["step_s"] / t["step_s"]],
                 [mode, mem, p["memory_mib"], t["memory_mib"], r["memory_ratio"]],
                 [mode, "RSS at train start MiB", p["rss_at_train_start_mib"], t["rss_at_train_start_mib"],
                  p["rss_at_train_start_mib"] / t["rss_at_train_start_mib"]],
                 [mode, "MFU", p["mfu"], t["mfu"], p["mfu"] / t["mfu"]],
                 [mode, "first-step loss", r["same_work"]["first_loss"]["polm"], r["same_work"]["first_loss"]["trl"],
                  r["same_work"]["first_loss"]["polm"] / r["same_work"]["first_loss"]["trl"]]]
    print(common.format_table(["mode", "figure", "polm", "TRL", "polm/TRL"], rows))
    for mode, r in results.items():
        w = r["same_work"]
        print(f"{mode}: same tokens per step {w['tokens_per_step_equal']}, same targets {w['targets_per_step_equal']}, "
              f"loss rel. diff first {w['loss_rel_diff_first']:.1e} max {w['loss_rel_diff_max']:.1e}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (~2-3 min on 2 CPU cores)")
    parser.add_argument("--modes", default="lora,full", help="comma-separated: lora, full")
    parser.add_argument("--steps", type=int, help="optimizer steps per trial")
    parser.add_argument("--repeats", type=int, help="measured rounds per side")
    parser.add_argument("--polm-optimizer-impl", choices=["auto", "fused", "foreach", "for-loop"],
                        help="polm's train.optimizer_impl (default auto: fused where torch has the kernel)")
    parser.add_argument("--polm-packed-attention", choices=["segment", "mask"],
                        help="polm's data.packed_attention (default segment: SDPA per packed example)")
    common.add_output_args(parser, "sft_vs_trl", common.THREADS_HELP_CONTENDED)
    return parser.parse_args(argv)


def run_benchmark(args: argparse.Namespace, settings: Settings) -> dict:
    """Encode the data once, time the matmul peak, run every mode; the report that goes to JSON."""
    from polm.assets import resolve_model
    from polm.models import load_tokenizer

    model_dir = resolve_model(MODEL)
    examples, raw = build_examples(settings, load_tokenizer(model_dir))
    steps = per_step_tokens(examples, settings)
    common.set_threads(args.threads)  # the matmul peak is measured with the workers' thread count
    machine = common.machine_description(args.device, ("torch", "transformers", "peft", "trl", "accelerate"))
    peak = common.matmul_peak_flops(args.device)
    lengths = sorted(len(e["input_ids"]) for e in examples)
    print(f"{machine['cpu']} ({machine['cores']} cores, {machine['torch_threads']} torch threads), matmul peak "
          f"{peak['flops_per_s'] / 1e9:.1f} GFLOP/s; {len(examples)} examples of {lengths[0]}-{lengths[-1]} tokens",
          flush=True)
    started, results, tokenization = time.perf_counter(), {}, None
    with tempfile.TemporaryDirectory(prefix="polm-bench-data-") as tmp:
        (Path(tmp) / "examples.json").write_text(json.dumps(examples))
        (Path(tmp) / "raw.json").write_text(json.dumps(raw))
        base = {"model_dir": model_dir, "device": args.device, "settings": asdict(settings), "threads": args.threads,
                "examples_path": str(Path(tmp) / "examples.json")}
        for i, mode in enumerate(args.modes.split(",")):
            results[mode] = bench_mode(mode, settings, base, steps, peak, first=i == 0,
                                       raw_path=str(Path(tmp) / "raw.json"))
            tokenization = results[mode].pop("tokenization_check", tokenization)
    return {
        "benchmark": "sft_vs_trl", "command": common.command_line(SCRIPT),
        "quick": args.quick, "device": args.device, "machine": machine,
        "matmul_peak": {"start": peak, "end": common.matmul_peak_flops(args.device)}, "settings": asdict(settings),
        "trl_fast_options": {"padding_free": settings.trl_padding_free, "gradient_checkpointing": False,
                             "packing": False, "use_liger_kernel": False,
                             "fused_lm_head": "always on in TRL 1.16 (chunked log-probs, torch fallback on CPU)"},
        "data": {"sources": [s for s, _ in SOURCES], "examples": len(examples), "length_min": lengths[0],
                 "length_median": lengths[len(lengths) // 2], "length_max": lengths[-1],
                 "tokens_per_step": [s["tokens"] for s in steps], "targets_per_step": [s["targets"] for s in steps]},
        "tokenization_check": tokenization, "results": results, "goals": goals(results),
        "wall_s": round(time.perf_counter() - started, 1), "load_avg_1m_at_end": common.load_avg_1m()}


def goals(results: dict) -> dict:
    """BENCHMARKS goal on CPU: ≥ 1.3× TRL's throughput and ≤ 0.8× its peak memory, with the same losses."""
    return {mode: {"throughput_ge_1.3x": r["speedup"] >= 1.3, "memory_le_0.8x": r["memory_ratio"] <= 0.8,
                   "same_losses": r["same_work"]["loss_rel_diff_max"] < 1e-3} for mode, r in results.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if common.serve_worker(args, worker, common.HF_WORKER_ENV):
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = common.with_flags(Settings(), QUICK if args.quick else None, steps=args.steps, repeats=args.repeats,
                                 polm_optimizer_impl=args.polm_optimizer_impl,
                                 polm_packed_attention=args.polm_packed_attention)
    out = common.results_path("sft_vs_trl", args.quick, args.out)
    report = run_benchmark(args, settings)
    print_table(report["results"], args.device)
    for mode, met in report["goals"].items():
        print(f"{mode}: goals " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items()))
    common.write_report(out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
