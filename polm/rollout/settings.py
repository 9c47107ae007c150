"""The prompt-data and rollout settings every RL recipe (grpo, ppo) reads from its config: which
prompts, how they are formatted, and how completions are sampled from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from polm.rollout.base import SamplingConfig
from polm.rollout.stream import check_rollout_shape
from polm.train.config import TrainConfig


@dataclass
class PromptData:
    train: str = "builtin:reasoning-gym/basic_arithmetic?n=2000&seed=0"
    chat: bool = True                  # apply the tokenizer's chat template to prompts
    max_prompt_length: int = 256       # longer prompts are dropped (and counted)
    prompt_suffix: str = ""            # appended to each prompt on a new line (e.g. the eval's answer-format line)


@dataclass
class RolloutSettings:
    backend: str = "hf"                # a name in polm.rollout.GENERATORS (hf, vllm) or package.module:factory
    prompts_per_rollout: int = 4
    group_size: int = 8                # completions per prompt (G)
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    min_new_tokens: int = 0            # EOS/stop ignored before this length (fixed-length rollouts, benchmarks)

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(n=self.group_size, max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, stop=list(self.stop),
                              min_new_tokens=self.min_new_tokens)

    def check(self, train: TrainConfig) -> None:
        """Valid sampling settings, and rollouts that fill whole optimizer steps."""
        self.sampling().validate()
        check_rollout_shape(self.prompts_per_rollout, self.group_size, train.micro_batch_size, train.grad_accum)


def rl_model_card(recipe: str, cfg, run_dir: Path) -> str:
    """README of an RL run's `final/` (GRPO, PPO): a LoRA adapter or a full model, its prompts, rewards
    and rollout shape. `cfg` has method, lora, model, data (PromptData), rewards, train, rollout."""
    kind = "full model" if cfg.method == "full" else f"LoRA adapter (r={cfg.lora.r}, alpha={cfg.lora.alpha})"
    return (f"# {run_dir.name}\n\n{recipe} fine-tune of `{cfg.model.name}` written by polm ({kind}).\n\n"
            f"- prompts: `{cfg.data.train}`\n- rewards: {cfg.rewards}\n- steps: {cfg.train.max_steps}, "
            f"lr {cfg.train.lr}, {cfg.rollout.prompts_per_rollout} prompts × {cfg.rollout.group_size} "
            f"completions per rollout\n")
