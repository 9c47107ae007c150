"""Model-based rewards: a trained reward model (`polm rm`) and an LLM judge with a rubric (RLAIF)."""

from __future__ import annotations

import functools

import torch

from polm.data.templating import prompt_of
from polm.errors import PolmError
from polm.rewards.base import reward

JUDGE_TEMPLATE = """Rate the assistant response to the user prompt on a scale from 0 (worst) to 9 (best).
Rubric: {rubric}

[User prompt]
{prompt}

[Response]
{response}

Reply with one digit."""
DEFAULT_RUBRIC = "The response answers the request correctly, helpfully and concisely."


@functools.lru_cache(maxsize=2)
def _load_reward_model(path: str, device: str):
    """The `polm rm` loader (polm.models.heads), which formats (prompt, response) exactly as in RM training."""
    from polm.models.heads import load_reward_model

    return load_reward_model(path, device=device)


@reward("reward_model")
def reward_model(completions: list[str], records: list[dict], model: str = "", device: str = "auto",
                 batch_size: int = 8) -> list[float]:
    """The scalar score r(x, y) of a reward model (`polm rm` output, or any one-output sequence classifier)."""
    if not model:
        raise PolmError("reward 'reward_model' needs a model", where="reward_options.reward_model.model",
                        fix="Set reward_options.reward_model.model=runs/rm/final.")
    rm = _load_reward_model(model, device)
    items = [{"prompt": prompt_of(r), "completion": c} for c, r in zip(completions, records)]
    return rm.score(items, batch_size=batch_size)


@functools.lru_cache(maxsize=2)
def _load_judge(ref: str, device: str):
    from polm.eval.model import ModelAdapter

    return ModelAdapter.load(ref, device=device)


def judge_prompts(completions: list[str], records: list[dict], rubric: str) -> list[str]:
    """The judge's question for each (prompt, response) pair."""
    def text(p: str | list[dict]) -> str:
        return p if isinstance(p, str) else "\n".join(f"{m['role']}: {m['content']}" for m in p)

    return [JUDGE_TEMPLATE.format(rubric=rubric, prompt=text(prompt_of(r)), response=c)
            for c, r in zip(completions, records)]


def expected_grade(digit_logprobs: torch.Tensor) -> torch.Tensor:
    """Σ_d d · softmax(logp)_d / 9 over the digits 0..9: a grade in [0, 1].  [N,10] -> [N]."""
    probs = digit_logprobs.softmax(-1)
    return (probs * torch.arange(10, dtype=probs.dtype)).sum(-1) / 9


@reward("judge")
def llm_judge(completions: list[str], records: list[dict], model: str = "", rubric: str = DEFAULT_RUBRIC,
              device: str = "auto") -> list[float]:
    """RLAIF (Bai et al. 2022; Lee et al. 2023): a judge model grades each response 0-9 against the
    rubric; the reward is the expected grade under the judge's next-token distribution over the
    ten digits, / 9 — deterministic and never unparseable, even for a small judge."""
    if not model:
        raise PolmError("reward 'judge' needs a judge model", where="reward_options.judge.model",
                        fix="Set reward_options.judge.model=<model name or directory>.")
    judge = _load_judge(model, device)
    contexts = [judge.format_prompt(q) for q in judge_prompts(completions, records, rubric)]
    sep = "" if judge.chat else " "
    scores = judge.loglikelihood([(ctx, f"{sep}{d}") for ctx in contexts for d in range(10)])
    logps = torch.tensor([lp for lp, _ in scores], dtype=torch.float64).view(len(contexts), 10)
    return expected_grade(logps).tolist()
