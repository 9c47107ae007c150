"""PPO for RLHF: a policy with a value head, a reward model or verifiable reward, GAE advantages.

    polm ppo configs/ppo_arith.yaml
    polm ppo configs/ppo_arith.yaml rewards="{reward_model: 1.0}" reward_options.reward_model.model=runs/rm/final

Per rollout (polm.rollout): completions are scored once (polm.rewards); the token rewards are
r_t = -β (log π_sampling - log π_ref)_t plus the score on the last token (Ziegler et al. 2019;
Ouyang et al. 2022). A value head V (one Linear on the policy's last hidden state) gives V_t; GAE
(polm.advantages.gae) turns r and V into advantages (whitened over the rollout) and returns. Each
rollout is trained on for μ = `epochs_per_rollout` passes with the token-level clipped surrogate
(polm.losses.policy dapo aggregation) plus `vf_coef` × the clipped value loss.
Simplified: the value head shares the policy's backbone (no separate critic model).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from polm.advantages import gae_advantages
from polm.config import add_config_arguments, config_from_args
from polm.data.templating import trained_prompt_format
from polm.errors import PolmError
from polm.io import atomic_write_json
from polm.losses.policy import POLICY_LOSSES, clipped_value_loss
from polm.models import LoraConfig, ModelConfig, attach_adapter, load_model, load_tokenizer
from polm.models.heads import VALUE_HEAD_FILE, ValueHead, value_head_bytes
from polm.models.save import save_final
from polm.ops import masked_mean
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
class PPOConfig:
    output_dir: str = "runs/ppo"
    method: Literal["full", "lora"] = "lora"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: PromptData = field(default_factory=PromptData)
    rollout: RolloutSettings = field(default_factory=lambda: RolloutSettings(group_size=1, prompts_per_rollout=16))
    rewards: dict[str, float] = field(default_factory=lambda: {"reasoning_gym": 1.0})
    reward_options: dict[str, dict] = field(default_factory=dict)
    beta: float = 0.05                 # per-token KL penalty (k1) in the reward
    gamma: float = 1.0
    lam: float = 0.95
    clip_low: float = 0.2
    clip_high: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True     # A ← (A - mean) / std over the rollout's tokens
    epochs_per_rollout: int = 2
    # rollouts free large tensors every step: a pinned 1 MiB mmap threshold returns them (docs/training-loop.md)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(malloc_mmap_threshold_mb=1))
    overwrite: bool = False

    def validate(self) -> None:
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise PolmError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.beta < 0 or self.vf_coef < 0:
            raise PolmError(f"beta and vf_coef must be >= 0, got {self.beta}, {self.vf_coef}")
        self.rollout.check(self.train)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/ppo_arith.yaml")


def run(args: argparse.Namespace) -> int:
    result = run_ppo(config_from_args(PPOConfig, args))
    print(f"PPO finished: {result['steps']} steps; model in {result['final_dir']}")
    return 0


def run_ppo(cfg: PPOConfig) -> dict:
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume=cfg.train.resume, overwrite=cfg.overwrite)
    seed_everything(cfg.train.seed)   # before the adapter's random init
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    rewards = RewardSet(cfg.rewards, cfg.reward_options)
    prompts, data_info = prepare_prompts(cfg.data, tokenizer, rewards, recipe="ppo")

    model = load_model(cfg.model)
    if cfg.method == "lora":
        model = attach_adapter(model, cfg.lora, gradient_checkpointing=cfg.model.gradient_checkpointing)
    device = next(model.parameters()).device
    head = ValueHead(model.config.hidden_size).to(device)
    reference = rl_reference(model, cfg.method, cfg.beta)
    generator = build_generator(cfg.rollout.backend, model, tokenizer, model_path=cfg.model.name)
    pad_id, temperature = tokenizer.pad_token_id, cfg.rollout.temperature or 1.0

    def make_rollout(records: list[dict], index: int) -> tuple[list[dict], dict[str, float]]:
        generator.sync_weights()
        completions = generator.generate([r["prompt_ids"] for r in records], cfg.rollout.sampling(), seed=cfg.train.seed + index)
        scores = rewards.score([c.text for c in completions], [records[c.prompt_index] for c in completions])
        examples = [{"prompt_ids": records[c.prompt_index]["prompt_ids"], "completion_ids": c.token_ids,
                     "old_logprobs": c.logprobs, "score": s} for c, s in zip(completions, scores.total)]
        if reference is not None:
            add_reference_logprobs(reference, examples, pad_id, cfg.train.micro_batch_size, temperature)
        kl = add_values_and_advantages(model, head, examples, pad_id, cfg, temperature)
        lengths = [len(c.token_ids) for c in completions]
        return examples, {**scores.metrics(), "kl": kl, "completion/length": sum(lengths) / len(lengths)}

    stream = RolloutStream(prompts, make_rollout, lambda ex: collate_rollout(ex, pad_id),
                           prompts_per_rollout=cfg.rollout.prompts_per_rollout, group_size=cfg.rollout.group_size,
                           epochs=cfg.epochs_per_rollout, micro_batch_size=cfg.train.micro_batch_size,
                           grad_accum=cfg.train.grad_accum, seed=cfg.train.seed)
    policy_loss = POLICY_LOSSES.get("dapo")

    def step(batch: dict) -> StepOutput:
        policy = policy_forward(model, batch, temperature, entropy=True, hidden=True)   # one backbone pass for both
        mask = batch["completion_mask"]
        pol = policy_loss(policy.logprobs, batch["old_logprobs"], batch["advantage"], mask,
                          clip_low=cfg.clip_low, clip_high=cfg.clip_high, entropy=policy.entropy)
        val = clipped_value_loss(head(policy.hidden), batch["old_values"], batch["returns"], mask, cfg.value_clip)
        metrics = {**pol.metrics, **val.metrics, "value/loss": float(val.loss_sum.detach()) / max(val.count, 1),
                   "policy/loss": float(pol.loss_sum.detach()) / max(pol.count, 1)}
        return StepOutput(pol.loss_sum + cfg.vf_coef * val.loss_sum, pol.count, metrics)

    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    with run_directory(run_dir, cfg, recipe="ppo", overwrite=cfg.overwrite,
                       lineage={"model": cfg.model.name, "data": data_info}):
        result = train(model=model, step_fn=step, batches=stream, cfg=cfg.train, run_dir=run_dir, params=params)
        atomic_write_json(run_dir / "timing.json", {"generation_s": stream.session_generation_s,
                                             "training_s": result.elapsed_s - stream.session_generation_s,
                                             "reward_failures": dict(rewards.failures)})
        final_dir = save_final(model, tokenizer, run_dir, card=rl_model_card("PPO", cfg, run_dir),
                               extra_files={VALUE_HEAD_FILE: value_head_bytes(head)},
                               prompt_format=trained_prompt_format(tokenizer, chat=cfg.data.chat,
                                                                   suffix=cfg.data.prompt_suffix))
        plot_metrics(run_dir)   # loss.png, reward.png (total and each reward), lr.png, grad_norm.png
    rewards.report_failures()
    return {"steps": result.steps, "losses": result.losses, "final_dir": str(final_dir), "model": model,
            "value_head": head, "run_dir": str(run_dir)}


@torch.no_grad()
def add_values_and_advantages(model, head: ValueHead, examples: list[dict], pad_id: int, cfg: PPOConfig,
                              temperature: float) -> float:
    """Adds old_values, advantage (whitened GAE) and returns per completion token; returns the mean k1 KL."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:   # V_t in micro-batches, as the policy will see them in training
        for i in range(0, len(examples), cfg.train.micro_batch_size):
            chunk = examples[i:i + cfg.train.micro_batch_size]
            part = {k: v.to(device) for k, v in collate_rollout(chunk, pad_id).items()}
            values = head(policy_forward(model, part, temperature, hidden=True).hidden).float()
            for row, ex in enumerate(chunk):
                ex["old_values"] = values[row, :len(ex["completion_ids"])].tolist()
    finally:
        model.train(was_training)
    batch = {k: v.to(device) for k, v in collate_rollout(examples, pad_id).items()}
    values, mask = batch["old_values"], batch["completion_mask"]
    kl = batch["old_logprobs"] - batch["ref_logprobs"] if "ref_logprobs" in batch else torch.zeros_like(values)
    rewards = -cfg.beta * kl * mask
    last = mask.long().sum(1) - 1
    rewards[torch.arange(len(examples)), last] += torch.tensor([e["score"] for e in examples], device=device)
    adv, returns = gae_advantages(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam)
    if cfg.whiten_advantages:
        mean = masked_mean(adv, mask)
        adv = (adv - mean) / (masked_mean((adv - mean) ** 2, mask).sqrt() + 1e-8)
    for i, ex in enumerate(examples):
        n = len(ex["completion_ids"])
        ex.update(advantage=adv[i, :n].tolist(), returns=returns[i, :n].tolist())
    return float(masked_mean(kl, mask))

