"""Reward model: a scalar head on a causal LM, trained on preference pairs with the Bradley–Terry loss.

    polm rm configs/rm.yaml
    polm rm configs/rm.yaml method=lora train.max_steps=300

r(x, y) = w · h_last, the score head on the hidden state of the sequence's last real token;
ℓ = -log σ(r(x, y_w) - r(x, y_l) - m) (Ouyang et al. 2022; margin m from a record's `margin`, Touvron
et al. 2023). Reports pair accuracy [r_w > r_l] on held-out pairs. `final/` is a plain Hugging Face
`AutoModelForSequenceClassification` (LoRA is merged in), and
`polm.models.heads.load_reward_model(path).score(texts)` turns it into a reward function.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from polm.config import add_config_arguments, config_from_args
from polm.data.collate import pad_collate
from polm.data.loaders import summarize_skips
from polm.data.preferences import encode_completion, load_preferences, split_by_prompt
from polm.data.templating import trained_prompt_format
from polm.errors import PolmError
from polm.io import atomic_write_json, records_sha256
from polm.losses import REWARD_MODEL_LOSSES
from polm.models import LoraConfig, ModelConfig, load_tokenizer, merge_adapter
from polm.models.heads import attach_score_adapter, load_score_model, sequence_scores
from polm.models.save import save_final
from polm.rundir import check_output_dir, run_directory
from polm.train.batches import BatchStream
from polm.train.config import TrainConfig
from polm.train.heldout import make_heldout_eval
from polm.train.loop import StepOutput, seed_everything, train
from polm.train.plots import plot_metrics


@dataclass
class RMData:
    train: str = "runs/data/arith_pairs.jsonl"
    eval: str | None = None
    eval_fraction: float = 0.1        # held-out pairs for the accuracy that is reported
    max_length: int = 512
    chat: bool = True
    skip_invalid: bool = False


@dataclass
class RMConfig:
    output_dir: str = "runs/rm"
    method: Literal["full", "lora"] = "lora"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: RMData = field(default_factory=RMData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    loss: str = "bradley_terry"
    center_coefficient: float = 0.0   # + c·(r_w + r_l)²: keeps rewards centred at 0 (Eisenstein et al. 2023)
    overwrite: bool = False

    def validate(self) -> None:
        if not 0 <= self.data.eval_fraction < 1:
            raise PolmError(f"data.eval_fraction must be in [0, 1), got {self.data.eval_fraction}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/rm.yaml")
    parser.add_argument("--skip-invalid", action="store_true", help="count and skip malformed or identical pairs")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(RMConfig, args, ["data.skip_invalid=true"] if args.skip_invalid else [])
    result = run_rm(cfg)
    acc = result["eval"].get("accuracy")
    shown = f"held-out pair accuracy {acc:.3f} on {result['eval_pairs']} pairs" if acc is not None else "no held-out pairs"
    print(f"reward model finished: {result['steps']} steps, {shown}; model in {result['final_dir']}")
    return 0


def run_rm(cfg: RMConfig) -> dict:
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume=cfg.train.resume, overwrite=cfg.overwrite)
    seed_everything(cfg.train.seed)   # before the score head's and the adapter's random init
    loss_fn = REWARD_MODEL_LOSSES.get(cfg.loss)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    train_ex, eval_ex, info = prepare_data(cfg, tokenizer)

    model = load_score_model(cfg.model, tokenizer.pad_token_id)
    if cfg.method == "lora":
        model = attach_score_adapter(model, cfg.lora)

    def collate(examples: list[dict]) -> dict:
        seqs = [{"input_ids": ex[k], "labels": ex[k]} for k in ("chosen", "rejected") for ex in examples]
        batch = pad_collate(seqs, tokenizer.pad_token_id)
        del batch["labels"]  # the loop then counts pairs, not tokens
        batch["margin"] = torch.tensor([ex.get("margin", 0.0) for ex in examples])
        return batch

    def step(batch: dict) -> StepOutput:
        scores = sequence_scores(model, batch)
        n = scores.shape[0] // 2
        out = loss_fn(scores[:n], scores[n:], margin=batch["margin"], center_coefficient=cfg.center_coefficient)
        return StepOutput(loss_sum=out.losses.sum(), count=n, metrics={k: float(v) for k, v in out.metrics.items()})

    batches = BatchStream(train_ex, collate, cfg.train.micro_batch_size, seed=cfg.train.seed)
    device = next(model.parameters()).device
    evaluate = make_heldout_eval(step, eval_ex, collate, cfg.train.micro_batch_size, device) if eval_ex else None
    with run_directory(run_dir, cfg, recipe="rm", overwrite=cfg.overwrite, lineage={"model": cfg.model.name, "data": info}):
        result = train(model=model, step_fn=step, batches=batches, cfg=cfg.train, run_dir=run_dir, eval_fn=evaluate)
        final_eval = evaluate() if evaluate else {}
        atomic_write_json(run_dir / "eval" / "pairs.json", {"eval_pairs": len(eval_ex), **final_eval})
        final_dir = save_final(merge_adapter(model), tokenizer, run_dir, card=model_card(cfg, run_dir, final_eval),
                               prompt_format=trained_prompt_format(tokenizer, chat=cfg.data.chat))
        plot_metrics(run_dir)
    return {"steps": result.steps, "final_loss": result.final_loss, "losses": result.losses, "eval": final_eval,
            "eval_pairs": len(eval_ex), "final_dir": str(final_dir), "run_dir": str(run_dir), "data": info}


def prepare_data(cfg: RMConfig, tokenizer) -> tuple[list[dict], list[dict], dict]:
    """Pairs -> {'chosen': ids, 'rejected': ids, 'margin'}; pairs whose prompt fills max_length are counted and skipped."""
    loaded = load_preferences(cfg.data.train, skip_invalid=cfg.data.skip_invalid)
    if loaded.skipped:
        print(summarize_skips(loaded))
    records, eval_records = loaded.records, []
    if cfg.data.eval:
        eval_records = load_preferences(cfg.data.eval, skip_invalid=cfg.data.skip_invalid).records
    elif cfg.data.eval_fraction > 0:
        records, eval_records = split_by_prompt(records, cfg.data.eval_fraction, cfg.train.seed)
    examples, too_long = encode_for_scoring(records, tokenizer, cfg.data.max_length, cfg.data.chat)
    if not examples:
        raise PolmError(f"no pair is left from '{cfg.data.train}' after tokenization ({too_long} prompts longer "
                        f"than data.max_length={cfg.data.max_length})", fix="Raise data.max_length.")
    if too_long:
        print(f"Skipped {too_long} pairs whose prompt is longer than data.max_length={cfg.data.max_length}")
    eval_examples = encode_for_scoring(eval_records, tokenizer, cfg.data.max_length, cfg.data.chat)[0]
    info = {"train": cfg.data.train, "train_sha256": records_sha256(loaded.records), "pairs": len(examples),
            "eval_pairs": len(eval_examples), "skipped_invalid": len(loaded.skipped), "skipped_prompt_too_long": too_long}
    return examples, eval_examples, info


def encode_for_scoring(records: list[dict], tokenizer, max_length: int, chat: bool) -> tuple[list[dict], int]:
    """Token ids of prompt + chosen and prompt + rejected (cut at max_length), and how many were skipped."""
    out, too_long = [], 0
    for record in records:
        encoded = {k: encode_completion(record["prompt"], record[k], tokenizer, chat) for k in ("chosen", "rejected")}
        sides = {k: ids[:max_length] for k, (ids, _, _) in encoded.items()}
        if encoded["chosen"][2] >= max_length:   # the prompt alone fills the window: both scores would be equal
            too_long += 1
            continue
        out.append({**sides, "margin": record.get("margin", 0.0)})
    return out, too_long


def model_card(cfg: RMConfig, run_dir: Path, final_eval: dict) -> str:
    """README of `final/`, a standalone AutoModelForSequenceClassification (a LoRA adapter is merged in first)."""
    acc = final_eval.get("accuracy")
    return (f"# {run_dir.name}\n\nBradley–Terry reward model on `{cfg.model.name}`, trained by polm on "
            f"`{cfg.data.train}`" + (f"; held-out pair accuracy {acc:.3f}" if acc is not None else "") + ".\n\n"
            "Load: `polm.models.heads.load_reward_model(path).score(texts)` or "
            "`transformers.AutoModelForSequenceClassification.from_pretrained(path)`.\n")
