"""Reward model: a scalar head on a causal LM, trained on preference pairs with the Bradley–Terry loss.

    polm rm configs/rm.yaml
    polm rm configs/rm.yaml method=lora train.max_steps=300

r(x, y) = w · h_last, the score head on the hidden state of the sequence's last real token;
ℓ = -log σ(r(x, y_w) - r(x, y_l) - m) (Ouyang et al. 2022; margin m from a record's `margin`, Touvron
et al. 2023). Reports pair accuracy [r_w > r_l] on held-out pairs. `final/` is a plain Hugging Face
`AutoModelForSequenceClassification` (LoRA is merged in), and `load_reward_model(path).score(texts)`
turns it into a reward function.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from polm.data.collate import pad_collate
from polm.data.loaders import summarize_skips
from polm.data.preferences import encode_completion, load_preferences, split_by_prompt
from polm.errors import PolmError
from polm.io import atomic_write_json, records_sha256
from polm.losses import REWARD_MODEL_LOSSES
from polm.models import LoraConfig, ModelConfig, load_tokenizer, resolve_device, resolve_dtype
from polm.models.load import resolve_path
from polm.models.save import save_pretrained_atomic
from polm.recipes.common import add_config_arguments, config_from_args
from polm.rundir import check_output_dir, run_directory
from polm.train.batches import BatchStream
from polm.train.config import TrainConfig
from polm.train.heldout import make_heldout_eval
from polm.train.loop import StepOutput, train
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


def load_score_model(cfg: ModelConfig, pad_token_id: int):
    """AutoModelForSequenceClassification with one output on top of the LM (the head starts random)."""
    from transformers import AutoModelForSequenceClassification

    device = resolve_device(cfg.device)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_path(cfg.name), num_labels=1, dtype=resolve_dtype(cfg.dtype, device),
        trust_remote_code=cfg.trust_remote_code)
    model.config.pad_token_id = pad_token_id
    return model.to(device)


def attach_score_adapter(model, cfg: LoraConfig):
    """LoRA on the LM's linear layers; the new score head is trained in full (modules_to_save)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, task_type="SEQ_CLS",
                              target_modules=list(cfg.target_modules), use_rslora=cfg.rslora, use_dora=cfg.dora)
    return get_peft_model(model, peft_cfg)


def sequence_scores(model: nn.Module, batch: dict) -> torch.Tensor:
    """r = score(h[last real token]) for each right-padded row: [N]. The last token is found from the
    attention mask, not from pad ids (the pad token is often also the end-of-turn token)."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    body = getattr(base, base.base_model_prefix)
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    last = batch["attention_mask"].sum(-1) - 1
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return base.score(pooled).squeeze(-1).float()


def run_rm(cfg: RMConfig) -> dict:
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume=cfg.train.resume, overwrite=cfg.overwrite)
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
        final_dir = save_final(model, tokenizer, cfg, run_dir, final_eval)
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


def save_final(model, tokenizer, cfg: RMConfig, run_dir: Path, final_eval: dict) -> Path:
    """`final/`: a standalone AutoModelForSequenceClassification (a LoRA adapter is merged in first)."""
    if callable(getattr(model, "merge_and_unload", None)):
        model = model.merge_and_unload()
    acc = final_eval.get("accuracy")
    card = (f"# {run_dir.name}\n\nBradley–Terry reward model on `{cfg.model.name}`, trained by polm on "
            f"`{cfg.data.train}`" + (f"; held-out pair accuracy {acc:.3f}" if acc is not None else "") + ".\n\n"
            "Load: `polm.recipes.reward.load_reward_model(path).score(texts)` or "
            "`transformers.AutoModelForSequenceClassification.from_pretrained(path)`.\n")
    return save_pretrained_atomic(model, tokenizer, run_dir / "final", card=card, overwrite=True)


class RewardModel:
    """A trained reward model as a reward function: `score(items) -> list[float]`.

    An item is a string (scored as it is) or {'prompt': ..., 'completion': ...}, formatted with the
    chat template exactly as in training.
    """

    def __init__(self, model, tokenizer, chat: bool = True, max_length: int = 2048):
        self.model, self.tokenizer, self.chat, self.max_length = model.eval(), tokenizer, chat, max_length

    def _ids(self, item: Any) -> list[int]:
        if isinstance(item, str):
            return self.tokenizer(item, add_special_tokens=False)["input_ids"][:self.max_length]
        prompt = item["prompt"]
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return encode_completion(turns, item["completion"], self.tokenizer, self.chat)[0][:self.max_length]

    @torch.no_grad()
    def score(self, items: list, batch_size: int = 8) -> list[float]:
        device = next(self.model.parameters()).device
        out: list[float] = []
        for start in range(0, len(items), batch_size):
            seqs = [{"input_ids": ids, "labels": ids} for ids in map(self._ids, items[start:start + batch_size])]
            batch = pad_collate(seqs, self.tokenizer.pad_token_id)
            out += sequence_scores(self.model, {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}).tolist()
        return out


def load_reward_model(path: str | Path, device: str = "auto", chat: bool = True) -> RewardModel:
    """Load a `polm rm` output directory (or any single-output sequence classifier) as a RewardModel."""
    from transformers import AutoModelForSequenceClassification

    if not (Path(path) / "config.json").is_file():
        raise PolmError(f"'{path}' is not a reward model directory (no config.json)",
                        fix="Point to the final/ directory of a `polm rm` run.")
    tokenizer = load_tokenizer(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(path).to(resolve_device(device))
    if model.config.num_labels != 1:
        raise PolmError(f"'{path}' has {model.config.num_labels} outputs; a reward model has 1",
                        fix="Train one with `polm rm`.")
    return RewardModel(model, tokenizer, chat=chat)
