"""polm GRPO vs TRL `GRPOTrainer` on the embedded SmolLM2-135M-Instruct (LoRA, no vLLM on either side).

    python bench/grpo_vs_trl.py --quick            # 3 steps, a few minutes on 2 CPU cores
    python bench/grpo_vs_trl.py --device cuda

Both sides get the SAME chat-formatted reasoning-gym prompts in the same order, the same group size,
completion length, temperature, steps, LoRA targets, learning rate and the same reward (the task's
scorer), with the grpo loss and beta = 0. Each side runs in a fresh process. Per optimizer step the
wall time is split into generation (rollout + scoring) and training; steps 2..N are reported (step 1
pays one-off allocation). Writes bench/results/grpo_vs_trl.json.
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


@dataclass
class Settings:
    steps: int = 6
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    lr: float = 1e-5
    lora_r: int = 16
    seed: int = 0
    device: str = "cpu"


def polm_worker(s: Settings, out: Path) -> dict:
    from polm.config import load_config
    from polm.recipes.grpo import GRPOConfig, run_grpo
    from polm.train.metrics import read_metrics

    n = s.prompts_per_step * s.group_size
    cfg = load_config(GRPOConfig, None, [
        f"output_dir={out}", "overwrite=true", f"model.name={MODEL}", f"model.device={s.device}", "method=lora",
        f"lora.r={s.lora_r}", f"lora.alpha={2 * s.lora_r}", f"lora.target_modules=[{','.join(TARGETS)}]",
        f"data.train={DATA}", f"rollout.prompts_per_rollout={s.prompts_per_step}",
        f"rollout.group_size={s.group_size}", f"rollout.max_new_tokens={s.max_new_tokens}",
        f"rollout.temperature={s.temperature}", "rewards={reasoning_gym: 1.0}", "loss=grpo", "beta=0",
        f"train.max_steps={s.steps}", f"train.micro_batch_size={n}", "train.grad_accum=1", f"train.lr={s.lr}",
        "train.schedule=constant", f"train.seed={s.seed}", "train.progress=false", "train.tensorboard=false"])
    cfg.data.prompt_suffix = SUFFIX   # set directly: YAML would read its ': ' as a mapping
    run_grpo(cfg)
    rows = [r for r in read_metrics(out) if "loss" in r]
    elapsed = [0.0] + [r["elapsed_s"] for r in rows]
    steps = [{"step_s": elapsed[i + 1] - elapsed[i], "generation_s": r["time/generation_s"],
              "reward": r["reward/mean"]} for i, r in enumerate(rows)]
    return {"steps": steps}


def trl_worker(s: Settings, out: Path) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from polm.assets import resolve_model
    from polm.data.builtin import load_builtin
    from polm.verify import score_response

    records = load_builtin(DATA)
    rows = [{"prompt": [{"role": "user", "content": f"{r['prompt']}\n{SUFFIX}"}], "record": json.dumps(r)}
            for r in records]

    def reward(completions, record, **_):
        return [score_response(c[0]["content"], json.loads(rec)) for c, rec in zip(completions, record)]

    timing = {"generation_s": 0.0}
    steps: list[dict] = []
    original = GRPOTrainer._generate_and_score_completions

    def timed(self, inputs):
        started = time.perf_counter()
        try:
            return original(self, inputs)
        finally:
            timing["generation_s"] += time.perf_counter() - started

    GRPOTrainer._generate_and_score_completions = timed

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            timing["begin"], timing["generation_s"] = time.perf_counter(), 0.0

        def on_step_end(self, args, state, control, **kw):
            steps.append({"step_s": time.perf_counter() - timing["begin"], "generation_s": timing["generation_s"]})

    n = s.prompts_per_step * s.group_size
    args = GRPOConfig(output_dir=str(out), max_steps=s.steps, per_device_train_batch_size=n,
                      gradient_accumulation_steps=1, num_generations=s.group_size,
                      max_completion_length=s.max_new_tokens, temperature=s.temperature, learning_rate=s.lr,
                      lr_scheduler_type="constant", beta=0.0, loss_type="grpo", logging_steps=1, report_to=[],
                      save_strategy="no", seed=s.seed, use_cpu=s.device == "cpu", shuffle_dataset=False,
                      disable_tqdm=True)
    peft = LoraConfig(r=s.lora_r, lora_alpha=2 * s.lora_r, target_modules=TARGETS, task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=resolve_model(MODEL), reward_funcs=reward, args=args,
                          train_dataset=datasets.Dataset.from_list(rows), peft_config=peft, callbacks=[StepTimer()])
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    for step, r in zip(steps, rewards):
        step["reward"] = r
    return {"steps": steps}


def summarize(result: dict) -> dict:
    later = result["steps"][1:] or result["steps"]
    step = common.median([x["step_s"] for x in later])
    gen = common.median([x["generation_s"] for x in later])
    return {"step_s": step, "generation_s": gen, "training_s": step - gen,
            "reward_mean": sum(x.get("reward", 0.0) for x in result["steps"]) / len(result["steps"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker")
    parser.add_argument("--result")
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        settings = Settings(**spec["settings"])
        with tempfile.TemporaryDirectory(prefix="polm-grpo-bench-") as tmp:
            fn = polm_worker if spec["name"] == "polm" else trl_worker
            result = fn(settings, Path(tmp) / "run")
        common.write_worker_result(args.result, {**result, "peak_rss_mib": common.peak_rss_mib()})
        return 0
    quick = {"steps": 3, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 32}
    settings = Settings(device=args.device, **(quick if args.quick else {}))
    results = {}
    for name in ("polm", "trl"):
        raw = common.run_worker(SCRIPT, {"name": name, "settings": asdict(settings)})
        results[name] = {**summarize(raw), "peak_rss_mib": raw["peak_rss_mib"], "steps": raw["steps"]}
    ratio = results["polm"]["step_s"] / results["trl"]["step_s"]
    rows = [[name, f"{r['step_s']:.2f}", f"{r['generation_s']:.2f}", f"{r['training_s']:.2f}",
             f"{r['reward_mean']:.3f}", f"{r['peak_rss_mib']:.0f}"] for name, r in results.items()]
    print(common.format_table(["side", "s/step", "generation s", "training s", "reward", "peak RSS MiB"], rows))
    print(f"polm / TRL time per step: {ratio:.2f}x")
    out = {"settings": asdict(settings), "machine": common.machine_description(args.device, ("torch", "transformers",
           "peft", "trl")), "results": results, "polm_over_trl": ratio}
    common.write_json_atomic(common.RESULTS_DIR / ("grpo_vs_trl_quick.json" if args.quick else "grpo_vs_trl.json"), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
