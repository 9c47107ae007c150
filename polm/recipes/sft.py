"""Supervised fine-tuning: full, LoRA, DoRA or QLoRA, on chats, prompt/completion pairs or plain text.

    polm sft configs/sft_lora.yaml
    polm sft configs/sft_lora.yaml method=dora lora.r=32 train.max_steps=200
    polm sft configs/cpt_wiki.yaml          # continued pre-training on plain `text` records

The loss is token-level cross-entropy on target tokens only (assistant turns for chats, the completion
for prompt/completion, every token for plain text), normalised by the true number of target tokens
across the whole accumulated batch. LoRA: Hu et al. 2021; DoRA: Liu et al. 2024; QLoRA: Dettmers et
al. 2023 (4-bit NF4 base, CUDA only).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from polm.config import add_config_arguments, config_from_args
from polm.data.collate import pack_collate, pad_collate
from polm.data.loaders import load_records, summarize_skips
from polm.data.templating import encode_records, trained_prompt_format
from polm.errors import PolmError
from polm.io import records_sha256
from polm.models import LoraConfig, ModelConfig, attach_adapter, load_model, load_tokenizer
from polm.models.attention import packed_attention
from polm.models.save import save_final
from polm.ops.logprobs import causal_lm_loss
from polm.rundir import check_output_dir, run_directory
from polm.train.batches import BatchStream
from polm.train.config import TrainConfig
from polm.train.heldout import make_heldout_eval, with_perplexity
from polm.train.loop import StepOutput, seed_everything, train
from polm.train.plots import plot_metrics


@dataclass
class SFTData:
    train: str = "builtin:reasoning-gym/basic_arithmetic?n=2000&seed=0"
    eval: str | None = None           # held-out set; or carve one out with eval_fraction
    eval_fraction: float = 0.0
    max_length: int = 512
    truncation: Literal["right", "drop"] = "right"
    packing: bool = True              # padding-free: a micro-batch is one row with per-example positions
    packed_attention: Literal["segment", "mask"] = "segment"   # packed rows: SDPA per example, or one block mask
    chat: bool = True                 # chat-template prompt/completion records
    prompt_suffix: str = ""           # appended on a new line to each prompt (e.g. the eval's answer-format line)
    system_prompt: str | None = None  # a system turn before each prompt (chat records without one)
    skip_invalid: bool = False        # count and skip malformed records instead of stopping


@dataclass
class SFTConfig:
    output_dir: str = "runs/sft"
    method: Literal["full", "lora", "dora", "qlora"] = "lora"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: SFTData = field(default_factory=SFTData)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss_chunk_size: int = 1024       # chunked cross-entropy over the vocabulary; 0 = plain logits
    overwrite: bool = False

    def validate(self) -> None:
        if not 0 <= self.data.eval_fraction < 1:
            raise PolmError(f"data.eval_fraction must be in [0, 1), got {self.data.eval_fraction}")
        if self.method == "dora":
            self.lora.dora = True
        if self.method == "qlora" and self.model.quantize == "none":
            self.model.quantize = "nf4"
        if self.method != "qlora" and self.model.quantize != "none":
            raise PolmError(f"model.quantize={self.model.quantize} needs method=qlora (a quantized base is frozen)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/sft_lora.yaml")
    parser.add_argument("--skip-invalid", action="store_true", help="count and skip malformed records")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(SFTConfig, args, ["data.skip_invalid=true"] if args.skip_invalid else [])
    result = run_sft(cfg)
    loss = result["final_loss"]   # None when a resumed run had no step left to train
    print(f"SFT finished: {result['steps']} steps, final loss {'n/a' if loss is None else f'{loss:.4f}'}; "
          f"model in {result['final_dir']}")
    return 0


def run_sft(cfg: SFTConfig) -> dict:
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume=cfg.train.resume, overwrite=cfg.overwrite)
    seed_everything(cfg.train.seed)   # before the adapter's random init

    # 1. data: load, validate, template, tokenize — every user mistake surfaces before anything is written
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    train_examples, eval_examples, data_info = prepare_data(cfg, tokenizer)

    # 2. model: base (+ adapter)
    model = load_model(cfg.model)
    if cfg.method != "full":
        model = attach_adapter(model, cfg.lora, quantized=cfg.method == "qlora",
                               gradient_checkpointing=cfg.model.gradient_checkpointing)

    # 3. the loss: summed token cross-entropy; the loop divides by the true target-token count
    chunk = cfg.loss_chunk_size or None

    def step(batch: dict) -> StepOutput:
        loss_sum, n_targets = causal_lm_loss(model, batch, chunk_size=chunk)
        return StepOutput(loss_sum=loss_sum, count=n_targets)

    collate = (lambda ex: pack_collate(ex)) if cfg.data.packing else (lambda ex: pad_collate(ex, tokenizer.pad_token_id))
    batches = BatchStream(train_examples, collate, cfg.train.micro_batch_size, seed=cfg.train.seed)
    device = next(model.parameters()).device
    eval_fn = with_perplexity(make_heldout_eval(step, eval_examples, collate, cfg.train.micro_batch_size, device)) \
        if eval_examples else None

    # 4. train on the shared loop, inside a run directory that records how it ended
    lineage = {"model": cfg.model.name, "data": data_info}
    with run_directory(run_dir, cfg, recipe="sft", overwrite=cfg.overwrite, lineage=lineage):
        with packed_attention(model, cfg.data.packed_attention if cfg.data.packing else "mask"):
            result = train(model=model, step_fn=step, batches=batches, cfg=cfg.train, run_dir=run_dir, eval_fn=eval_fn)
        final_dir = save_final(model, tokenizer, run_dir, card=model_card(cfg, run_dir),
                               prompt_format=prompt_format(cfg, tokenizer))
        plot_metrics(run_dir)
    return {"steps": result.steps, "final_loss": result.final_loss, "final_dir": str(final_dir), "model": model,
            "run_dir": str(run_dir), "data": data_info}


def prepare_data(cfg: SFTConfig, tokenizer) -> tuple[list[dict], list[dict], dict]:
    """Records → validated → token ids + label masks; optional held-out split."""
    allowed = {"messages", "prompt_completion", "text"}
    loaded = load_records(cfg.data.train, skip_invalid=cfg.data.skip_invalid, allowed=allowed)
    if loaded.skipped:
        print(summarize_skips(loaded))
    fmt = prompt_format(cfg, tokenizer)
    records = [fmt.wrap_record(r) for r in loaded.records]
    eval_records: list[dict] = []
    if cfg.data.eval:
        eval_records = [fmt.wrap_record(r) for r in
                        load_records(cfg.data.eval, skip_invalid=cfg.data.skip_invalid, allowed=allowed).records]
    elif cfg.data.eval_fraction > 0:
        order = list(range(len(records)))
        random.Random(cfg.train.seed).shuffle(order)
        n_eval = max(1, int(len(records) * cfg.data.eval_fraction))
        eval_records = [records[i] for i in order[:n_eval]]
        records = [records[i] for i in order[n_eval:]]
    encode = dict(max_length=cfg.data.max_length, truncation=cfg.data.truncation, chat=cfg.data.chat)
    examples, stats = encode_records(records, tokenizer, **encode)
    if not examples:
        raise PolmError(f"no training example is left from '{cfg.data.train}' after tokenization ({stats})",
                        fix="Raise data.max_length or use data.truncation=right.")
    eval_examples = encode_records(eval_records, tokenizer, **encode)[0] if eval_records else []
    info = {"train": cfg.data.train, "train_sha256": records_sha256(loaded.records), "examples": len(examples),
            "eval_examples": len(eval_examples), "skipped": len(loaded.skipped), "encode": vars(stats)}
    return examples, eval_examples, info


def prompt_format(cfg: SFTConfig, tokenizer):
    """The prompt format the data settings give every training prompt (recorded in `final/`)."""
    return trained_prompt_format(tokenizer, chat=cfg.data.chat, suffix=cfg.data.prompt_suffix,
                                 system=cfg.data.system_prompt)


def model_card(cfg: SFTConfig, run_dir: Path) -> str:
    """README of `final/`: a PEFT adapter (LoRA/DoRA/QLoRA) or a full model, what it was trained on, how to load it."""
    kind = "full model" if cfg.method == "full" else f"{cfg.method.upper()} adapter (r={cfg.lora.r}, alpha={cfg.lora.alpha})"
    return (f"# {run_dir.name}\n\nSupervised fine-tune of `{cfg.model.name}` written by polm ({kind}).\n\n"
            f"- data: `{cfg.data.train}`\n- steps: {cfg.train.max_steps}, lr {cfg.train.lr}, "
            f"micro-batch {cfg.train.micro_batch_size} x accumulation {cfg.train.grad_accum}\n\n"
            "Load: `peft.AutoPeftModelForCausalLM.from_pretrained(path)` for an adapter, "
            "`transformers.AutoModelForCausalLM.from_pretrained(path)` for a full model, or `polm generate --model path`.\n")
