"""Group-relative policy optimisation with verifiable rewards: GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++.

    polm grpo configs/grpo_arith.yaml
    polm grpo configs/grpo_arith.yaml advantage=rloo loss=dapo clip_high=0.28 epochs_per_rollout=2

Each rollout: `prompts_per_rollout` prompts × `group_size` sampled completions (polm.rollout), scored
by the weighted rewards (polm.rewards), turned into advantages within each group (polm.advantages:
grpo, dr_grpo, rloo, reinforce_pp). The rollout is then trained on for μ = `epochs_per_rollout`
passes with the clipped surrogate (polm.losses.policy: grpo / dapo / bnpo / dr_grpo aggregation)
whose importance ratio is π_θ / π_sampling, the sampling logprobs the rollout engine returned.
With beta > 0 a KL estimator (k1/k2/k3) to the reference (the starting model) is added per token.
Papers: GRPO, Shao et al. 2024; Dr. GRPO, Liu et al. 2025; DAPO, Yu et al. 2025; RLOO, Ahmadian et al.
2024; REINFORCE++, Hu 2025. Simplified: no dynamic sampling (DAPO's filter of all-equal groups).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from polm.advantages import ADVANTAGES
from polm.data.loaders import load_records
from polm.data.templating import format_prompt, prompt_of
from polm.errors import PolmError
from polm.losses.kl import KL_ESTIMATORS
from polm.losses.policy import POLICY_LOSSES
from polm.models import LoraConfig, ModelConfig, attach_adapter, load_model, load_tokenizer
from polm.models.save import save_pretrained_atomic
from polm.recipes.common import add_config_arguments, config_from_args
from polm.rewards import RewardSet
from polm.rollout import SamplingConfig, build_generator
from polm.rollout.batch import collate_rollout, policy_forward
from polm.rollout.stream import RolloutStream, check_rollout_shape
from polm.rundir import check_output_dir, records_sha256, run_directory, write_json
from polm.train.config import TrainConfig
from polm.train.loop import StepOutput, train
from polm.train.plots import plot_metrics


@dataclass
class GRPOData:
    train: str = "builtin:reasoning-gym/basic_arithmetic?n=2000&seed=0"
    chat: bool = True                  # apply the tokenizer's chat template to prompts
    max_prompt_length: int = 256       # longer prompts are dropped (and counted)
    prompt_suffix: str = ""            # appended to each prompt on a new line (e.g. the eval's answer-format line)


@dataclass
class RolloutSettings:
    backend: Literal["hf", "vllm"] = "hf"
    prompts_per_rollout: int = 4
    group_size: int = 8                # completions per prompt (G)
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(n=self.group_size, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, stop=list(self.stop))

    def check(self, train: TrainConfig) -> None:
        """Valid sampling settings, and rollouts that fill whole optimizer steps."""
        self.sampling().validate()
        check_rollout_shape(self.prompts_per_rollout, self.group_size, train.micro_batch_size, train.grad_accum)


@dataclass
class GRPOConfig:
    output_dir: str = "runs/grpo"
    method: Literal["full", "lora"] = "lora"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: GRPOData = field(default_factory=GRPOData)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    rewards: dict[str, float] = field(default_factory=lambda: {"reasoning_gym": 1.0})
    reward_options: dict[str, dict] = field(default_factory=dict)
    advantage: str = "grpo"            # grpo | dr_grpo | rloo | reinforce_pp | package.module:function
    loss: str = "grpo"                 # grpo | dapo | bnpo | dr_grpo (aggregation of the clipped surrogate)
    epochs_per_rollout: int = 1        # μ: optimisation passes over each rollout batch
    clip_low: float = 0.2
    clip_high: float = 0.2             # > clip_low: DAPO's clip-higher
    beta: float = 0.0                  # KL coefficient (0: no reference model is kept)
    kl: str = "k3"
    eval_tasks: list[str] = field(default_factory=list)   # e.g. [arith:basic_arithmetic]; run every train.eval_every
    eval_limit: int = 50
    train: TrainConfig = field(default_factory=TrainConfig)
    overwrite: bool = False

    def validate(self) -> None:
        if self.advantage == "gae":
            raise PolmError("advantage=gae needs a value model", where="advantage", fix="Use `polm ppo` for GAE.")
        for registry, name, key in ((ADVANTAGES, self.advantage, "advantage"), (POLICY_LOSSES, self.loss, "loss"),
                                    (KL_ESTIMATORS, self.kl, "kl")):
            try:
                registry.get(name)
            except PolmError as err:
                raise PolmError(err.what, where=key, fix=err.fix) from None
        if self.beta < 0 or self.clip_low <= 0 or self.clip_high <= 0:
            raise PolmError(f"beta must be >= 0 and clip_low/clip_high > 0 (got {self.beta}, {self.clip_low}, "
                            f"{self.clip_high})")
        self.rollout.check(self.train)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/grpo_arith.yaml")


def run(args: argparse.Namespace) -> int:
    result = run_grpo(config_from_args(GRPOConfig, args))
    t = result["timing"]
    print(f"GRPO finished: {result['steps']} steps, last reward mean {result['reward_mean']:.3f}; "
          f"generation {t['generation_s']:.1f}s, training {t['training_s']:.1f}s; model in {result['final_dir']}")
    return 0


def run_grpo(cfg: GRPOConfig) -> dict:
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume=cfg.train.resume, overwrite=cfg.overwrite)

    # 1. prompts and rewards: every user mistake surfaces before the model loads
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    rewards = RewardSet(cfg.rewards, cfg.reward_options)
    prompts, data_info = prepare_prompts(cfg, tokenizer, rewards)

    # 2. policy (+ adapter), reference for the KL term, rollout engine
    model = load_model(cfg.model)
    if cfg.method == "lora":
        model = attach_adapter(model, cfg.lora, gradient_checkpointing=cfg.model.gradient_checkpointing)
    reference = make_reference(model, cfg)
    generator = build_generator(cfg.rollout.backend, model, tokenizer, model_path=cfg.model.name)
    pad_id = tokenizer.pad_token_id

    def make_rollout(records: list[dict], index: int) -> tuple[list[dict], dict[str, float]]:
        generator.sync_weights()
        completions = generator.generate([r["prompt_ids"] for r in records], cfg.rollout.sampling(), seed=cfg.train.seed + index)
        G = cfg.rollout.group_size
        scores = rewards.score([c.text for c in completions], [records[c.prompt_index] for c in completions])
        advantages = ADVANTAGES.get(cfg.advantage)(torch.tensor(scores.total, dtype=torch.float32), G)
        examples = [{"prompt_ids": records[c.prompt_index]["prompt_ids"], "completion_ids": c.token_ids,
                     "old_logprobs": c.logprobs, "advantage": float(a)} for c, a in zip(completions, advantages)]
        if reference is not None:
            add_reference_logprobs(reference, examples, pad_id, cfg)
        lengths = [len(c.token_ids) for c in completions]
        return examples, {**scores.metrics(), "completion/length": sum(lengths) / len(lengths),
                          "completion/truncated": sum(c.finish_reason == "length" for c in completions) / len(lengths)}

    stream = RolloutStream(prompts, make_rollout, lambda ex: collate_rollout(ex, pad_id),
                           prompts_per_rollout=cfg.rollout.prompts_per_rollout, group_size=cfg.rollout.group_size,
                           epochs=cfg.epochs_per_rollout, micro_batch_size=cfg.train.micro_batch_size,
                           grad_accum=cfg.train.grad_accum, seed=cfg.train.seed)

    # 3. the loss: the clipped surrogate on the completion tokens
    loss_fn = POLICY_LOSSES.get(cfg.loss)

    def step(batch: dict) -> StepOutput:
        policy = policy_forward(model, batch, cfg.rollout.temperature or 1.0, entropy=True)
        out = loss_fn(policy.logprobs, batch["old_logprobs"], batch["advantage"], batch["completion_mask"],
                      ref_logprobs=batch.get("ref_logprobs"), beta=cfg.beta, kl=cfg.kl, clip_low=cfg.clip_low,
                      clip_high=cfg.clip_high, entropy=policy.entropy, max_length=cfg.rollout.max_new_tokens)
        return StepOutput(out.loss_sum, out.count, out.metrics)

    eval_fn = None
    if cfg.eval_tasks:
        from polm.eval.runner import make_eval_fn

        eval_fn = make_eval_fn(model, tokenizer, cfg.eval_tasks, limit=cfg.eval_limit)

    # 4. the shared loop, inside a run directory
    lineage = {"model": cfg.model.name, "data": data_info}
    with run_directory(run_dir, cfg, recipe="grpo", overwrite=cfg.overwrite, lineage=lineage):
        result = train(model=model, step_fn=step, batches=stream, cfg=cfg.train, run_dir=run_dir, eval_fn=eval_fn)
        timing = {"generation_s": stream.session_generation_s,
                  "training_s": result.elapsed_s - stream.session_generation_s,
                  "reward_failures": dict(rewards.failures)}
        write_json(run_dir / "timing.json", timing)
        final_dir = save_final(model, tokenizer, cfg, run_dir)
        plot_metrics(run_dir)
        plot_rewards(run_dir)
    report_failures(rewards)
    return {"steps": result.steps, "losses": result.losses, "final_dir": str(final_dir), "model": model,
            "run_dir": str(run_dir), "timing": timing, "reward_mean": stream.metrics.get("reward/mean", float("nan")),
            "reward_failures": dict(rewards.failures)}


def prepare_prompts(cfg: GRPOConfig, tokenizer, rewards: RewardSet) -> tuple[list[dict], dict]:
    """Records with a 'prompt' (string) or 'messages' (ending in a user turn) → + 'prompt_ids'."""
    loaded = load_records(cfg.data.train, require_targets=False)
    rewards.check_records(loaded.records, cfg.data.train)
    prompts, too_long = [], 0
    for i, rec in enumerate(loaded.records):
        prompt = prompt_of(rec, f"{cfg.data.train}: record {i + 1}")
        if cfg.data.prompt_suffix and isinstance(prompt, str):
            prompt = f"{prompt}\n{cfg.data.prompt_suffix}"
        text = format_prompt(tokenizer, prompt, cfg.data.chat)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > cfg.data.max_prompt_length:
            too_long += 1
            continue
        prompts.append({**rec, "prompt_ids": ids})
    if not prompts:
        raise PolmError(f"every prompt of '{cfg.data.train}' is longer than data.max_prompt_length="
                        f"{cfg.data.max_prompt_length} tokens", fix="Raise data.max_prompt_length.")
    if too_long:
        print(f"polm grpo: skipped {too_long} prompts longer than {cfg.data.max_prompt_length} tokens")
    return prompts, {"train": cfg.data.train, "train_sha256": records_sha256(loaded.records),
                     "prompts": len(prompts), "skipped_too_long": too_long}


def make_reference(model, cfg: GRPOConfig):
    """The frozen starting policy for the KL term: LoRA's base (adapter off) or a copy of the full model."""
    if cfg.beta == 0:
        return None
    if cfg.method == "lora":
        return model   # add_reference_logprobs turns the adapter off
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


@torch.no_grad()
def add_reference_logprobs(reference, examples: list[dict], pad_id: int, cfg: GRPOConfig) -> None:
    """examples[i]['ref_logprobs'] = log π_ref(completion tokens), in micro-batches."""
    off = getattr(reference, "disable_adapter", None)
    was_training = reference.training
    reference.eval()
    try:
        for i in range(0, len(examples), cfg.train.micro_batch_size):
            chunk = examples[i:i + cfg.train.micro_batch_size]
            batch = collate_rollout(chunk, pad_id)
            batch = {k: v.to(next(reference.parameters()).device) for k, v in batch.items()}
            with off() if callable(off) else contextlib.nullcontext():
                lps = policy_forward(reference, batch, cfg.rollout.temperature or 1.0).logprobs
            for row, ex in enumerate(chunk):
                ex["ref_logprobs"] = lps[row, :len(ex["completion_ids"])].tolist()
    finally:
        reference.train(was_training)


def report_failures(rewards: RewardSet) -> None:
    failed = {k: v for k, v in rewards.failures.items() if v}
    if failed:
        print("polm: warning: reward failures during the run (scored 0): "
              + ", ".join(f"{k}: {v}" for k, v in failed.items()) + " — see reward/<name>/failures in metrics.jsonl")


def plot_rewards(run_dir: Path) -> Path:
    """plots/reward.png: the combined reward mean and each reward's mean per step."""
    from polm.train.metrics import read_metrics
    from polm.train.plots import _save_figure, _series

    records = read_metrics(run_dir)
    keys = sorted({k for r in records for k in r if k == "reward/mean" or (k.startswith("reward/") and k.endswith("/mean"))})
    curves = {"total" if k == "reward/mean" else k[len("reward/"):-len("/mean")]: _series(records, k) for k in keys}
    return _save_figure(curves, "reward (mean over the rollout)", f"Reward — {run_dir.name}", run_dir / "plots" / "reward.png")


def save_final(model, tokenizer, cfg, run_dir: Path, recipe: str = "GRPO") -> Path:
    """`final/`: a LoRA adapter or a full model, plus tokenizer and a model card."""
    kind = "full model" if cfg.method == "full" else f"LoRA adapter (r={cfg.lora.r}, alpha={cfg.lora.alpha})"
    card = (f"# {run_dir.name}\n\n{recipe} fine-tune of `{cfg.model.name}` written by polm ({kind}).\n\n"
            f"- prompts: `{cfg.data.train}`\n- rewards: {cfg.rewards}\n- steps: {cfg.train.max_steps}, "
            f"lr {cfg.train.lr}, {cfg.rollout.prompts_per_rollout} prompts × {cfg.rollout.group_size} "
            f"completions per rollout\n")
    if cfg.method == "full" and model.config.use_cache is False:
        model.config.use_cache = True
    return save_pretrained_atomic(model, tokenizer, run_dir / "final", card=card, overwrite=True)
