"""One fine-tuning stage of the knowledge curriculum: LoRA SFT on QA facts with the pieces `polm sft` is
built from (encode_records, causal_lm_loss, BatchStream, the shared loop, save_final), early-stopped on
the dev split's zero-shot greedy exact match, and the zero-shot accuracy of a model on a fact split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polm.data.collate import pack_collate
from polm.data.templating import encode_records
from polm.errors import PolmError
from polm.knowledge.facts import answer_text, is_correct, qa_prompt, sft_records
from polm.models.save import save_final
from polm.ops.logprobs import causal_lm_loss
from polm.rollout import SamplingConfig, build_generator
from polm.rollout.text import generate_text
from polm.rundir import run_directory
from polm.train.batches import BatchStream
from polm.train.config import TrainConfig
from polm.train.loop import StepOutput, train


def zero_shot_answers(model, tokenizer, facts: list[dict], *, max_new_tokens: int = 16, batch: int = 32) -> list[str]:
    """Per fact, the greedy answer to 'Q: q\\nA:' (up to the first newline, stripped)."""
    if not facts:
        return []
    gen = build_generator("hf", model, tokenizer, prompts_per_batch=batch)
    greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop=["\n"])
    texts = generate_text(gen, tokenizer, [qa_prompt(str(f["question"])) for f in facts], greedy, seed=0, chat=False)
    return [answer_text(t[0]) for t in texts]


def zero_shot_correct(model, tokenizer, facts: list[dict], *, max_new_tokens: int = 16,
                      batch: int = 32) -> list[float]:
    """Per fact, 1.0 when the greedy answer to 'Q: q\\nA:' matches (normalised EM), else 0.0."""
    answers = zero_shot_answers(model, tokenizer, facts, max_new_tokens=max_new_tokens, batch=batch)
    return [float(is_correct(a, f)) for a, f in zip(answers, facts)]


@dataclass
class DevEarlyStopping:
    """The loop's eval hook: dev exact match at each evaluation; the trainable weights of the best one
    (the earliest among ties) are kept in memory and put back by `restore()` when training ends."""

    model: Any
    tokenizer: Any
    dev_facts: list[dict]
    best: float = -1.0
    best_eval: int = 0
    evals: int = 0
    history: list[float] = field(default_factory=list)
    _weights: dict[str, torch.Tensor] | None = None

    def __call__(self) -> dict[str, float]:
        em = sum(zero_shot_correct(self.model, self.tokenizer, self.dev_facts)) / len(self.dev_facts)
        self.evals += 1
        self.history.append(em)
        if em > self.best:
            self.best, self.best_eval = em, self.evals
            self._weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        return {"dev_em": em}

    @torch.no_grad()
    def restore(self) -> None:
        if self._weights is None:
            return
        for name, p in self.model.named_parameters():
            if name in self._weights:
                p.copy_(self._weights[name])


def train_stage(model, tokenizer, facts: list[dict], dev_facts: list[dict], cfg: TrainConfig, run_dir: Path, *,
                max_length: int = 128, lineage: dict | None = None) -> dict[str, Any]:
    """Train `model` (with its adapter) on `facts` as 'Q: q\\nA:' -> ' answer' records; keep the weights of
    the evaluation with the best dev EM (every `cfg.eval_every` steps and at the end); save run_dir/final."""
    if not facts:
        raise PolmError(f"stage {run_dir.name} has no training fact", where=str(run_dir),
                        fix="The probe left this stage's category empty: use more facts or another condition.")
    if not dev_facts:
        raise PolmError("the dev split is empty, and every stage is early-stopped on it",
                        fix="Give facts with split: dev (never test).")
    examples, _ = encode_records(sft_records(facts), tokenizer, max_length=max_length, chat=False)

    def step(batch: dict) -> StepOutput:
        loss_sum, n_targets = causal_lm_loss(model, batch)
        return StepOutput(loss_sum=loss_sum, count=n_targets)

    batches = BatchStream(examples, pack_collate, cfg.micro_batch_size, seed=cfg.seed)
    stopper = DevEarlyStopping(model, tokenizer, dev_facts)
    with run_directory(run_dir, cfg, recipe="knowledge-stage", overwrite=True,
                       lineage={**(lineage or {}), "facts": len(facts)}):
        result = train(model=model, step_fn=step, batches=batches, cfg=cfg, run_dir=run_dir, eval_fn=stopper)
        stopper.restore()
        save_final(model, tokenizer, run_dir, card=f"# {run_dir.name}\n\nA polm knowledge-curriculum stage: "
                   f"LoRA SFT on {len(facts)} QA facts, the dev-best of {stopper.evals} evaluations.\n")
    best_step = min(stopper.best_eval * cfg.eval_every, result.steps) if cfg.eval_every > 0 else result.steps
    return {"facts": len(facts), "steps": result.steps, "best_step": best_step, "dev_em": stopper.best,
            "dev_em_history": stopper.history, "final_dir": str(run_dir / "final")}
