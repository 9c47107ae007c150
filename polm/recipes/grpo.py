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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from polm.advantages import ADVANTAGES
from polm.config import add_config_arguments, config_from_args
from polm.data.templating import trained_prompt_format
from polm.errors import PolmError
from polm.io import atomic_write_json
from polm.losses.kl import KL_ESTIMATORS
from polm.losses.policy import POLICY_LOSSES
from polm.models import LoraConfig, ModelConfig, attach_adapter, load_model, load_tokenizer
from polm.models.save import save_final
from polm.rewards import RewardSet
from polm.rollout import build_generator
from polm.rollout.batch import collate_rollout, policy_forward
from polm.rollout.prompts import prepare_prompts
from polm.rollout.reference import add_reference_logprobs, rl_reference
from polm.rollout.settings import PromptData, RolloutSettings, rl_model_card
from polm.rollout.stream import RolloutStream
from polm.rundir import check_output_dir, run_directory
from polm.train.config import TrainConfig
from polm.train.loop import StepOutput, seed_everything, train
from polm.train.plots import plot_metrics


@dataclass
class GRPOConfig:
    output_dir: str = "runs/grpo"
    method: Literal["full", "lora"] = "lora"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: PromptData = field(default_factory=PromptData)
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
    # rollouts free large tensors every step: a pinned 1 MiB mmap threshold returns them (docs/training-loop.md)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(malloc_mmap_threshold_mb=1))
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
    seed_everything(cfg.train.seed)   # before the adapter's random init

    # 1. prompts and rewards: every user mistake surfaces before the model loads
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    rewards = RewardSet(cfg.rewards, cfg.reward_options)
    prompts, data_info = prepare_prompts(cfg.data, tokenizer, rewards, recipe="grpo")

    # 2. policy (+ adapter), reference for the KL term, rollout engine
    model = load_model(cfg.model)
    if cfg.method == "lora":
        model = attach_adapter(model, cfg.lora, gradient_checkpointing=cfg.model.gradient_checkpointing)
    reference = rl_reference(model, cfg.method, cfg.beta)
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
            add_reference_logprobs(reference, examples, pad_id, cfg.train.micro_batch_size, cfg.rollout.temperature or 1.0)
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
        atomic_write_json(run_dir / "timing.json", timing)
        final_dir = save_final(model, tokenizer, run_dir, card=rl_model_card("GRPO", cfg, run_dir),
                               prompt_format=trained_prompt_format(tokenizer, chat=cfg.data.chat,
                                                                   suffix=cfg.data.prompt_suffix))
        plot_metrics(run_dir)   # loss.png, reward.png (total and each reward), lr.png, grad_norm.png
    rewards.report_failures()
    return {"steps": result.steps, "losses": result.losses, "final_dir": str(final_dir), "model": model,
            "run_dir": str(run_dir), "timing": timing, "reward_mean": stream.metrics.get("reward/mean", float("nan")),
            "reward_failures": dict(rewards.failures)}

