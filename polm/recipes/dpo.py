"""Preference optimisation on the shared loop: DPO and its family, KTO, and the reference-free ORPO,
SimPO and CPO.

    polm dpo configs/dpo.yaml
    polm dpo configs/dpo.yaml loss=ipo beta=0.5
    polm dpo configs/dpo.yaml loss=simpo beta=2.0 loss_options.gamma=0.5
    polm dpo configs/dpo.yaml loss=kto                 # paired data is split into good/bad examples
    polm dpo configs/dpo.yaml reference.mode=precompute

Per pair, the policy's (and reference's) summed log-probs of the chosen and rejected completions
(prompt tokens excluded) go to a registered loss in polm.losses.preference; the loop divides the
summed loss by the number of pairs. Papers: DPO (Rafailov et al. 2023), IPO (Azar et al. 2023),
cDPO (Mitchell 2023), robust DPO (Chowdhury et al. 2024), SLiC hinge (Zhao et al. 2023), KTO
(Ethayarajh et al. 2024), ORPO (Hong et al. 2024), SimPO (Meng et al. 2024), CPO (Xu et al. 2024).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from polm.config import add_config_arguments, config_from_args
from polm.data.collate import pack_collate, pad_collate
from polm.data.loaders import summarize_skips
from polm.data.preferences import encode_pairs, encode_unpaired, load_preferences, mismatched, split_by_prompt
from polm.data.templating import trained_prompt_format
from polm.errors import PolmError
from polm.io import records_sha256
from polm.losses import PREFERENCE_LOSSES, PairLogps, UnpairedLogps
from polm.models import LoraConfig, ModelConfig, attach_adapter, load_model, load_tokenizer
from polm.models.frozen import FrozenModel, cached_outputs, completion_logps
from polm.models.load import resolve_path
from polm.models.save import save_final
from polm.registry import check_options
from polm.rundir import check_output_dir, run_directory
from polm.train.batches import BatchStream
from polm.train.config import TrainConfig
from polm.train.heldout import make_heldout_eval
from polm.train.loop import StepOutput, autocast_context, resolve_precision, seed_everything, train
from polm.train.plots import plot_metrics


@dataclass
class DPOData:
    train: str = "runs/data/arith_pairs.jsonl"
    eval: str | None = None
    eval_fraction: float = 0.0
    max_length: int = 512
    packing: bool = True              # chosen + rejected (+ KL samples) of a micro-batch in one padding-free row
    chat: bool = True
    skip_invalid: bool = False        # count and skip malformed / identical pairs instead of stopping


@dataclass
class ReferenceConfig:
    mode: Literal["auto", "adapter", "copy", "precompute"] = "auto"   # auto: adapter for LoRA, copy for full
    cache_dir: str = "runs/.reference-cache"
    batch_size: int = 8               # sequences per forward in the precompute pass


@dataclass
class DPOConfig:
    output_dir: str = "runs/dpo"
    loss: str = "dpo"                 # dpo ipo cdpo robust hinge kto orpo simpo cpo, or package.module:function
    method: Literal["full", "lora", "dora"] = "lora"
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DPOData = field(default_factory=DPOData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-6))
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    beta: float | None = None         # every loss's β; None = the loss's own (paper) default
    loss_options: dict[str, Any] = field(default_factory=dict)   # the loss's other parameters, e.g. {gamma: 0.5}
    loss_chunk_size: int = 1024
    overwrite: bool = False

    def validate(self) -> None:
        if not 0 <= self.data.eval_fraction < 1:
            raise PolmError(f"data.eval_fraction must be in [0, 1), got {self.data.eval_fraction}")
        if self.method == "dora":
            self.lora.dora = True


def loss_kwargs(cfg: DPOConfig, fn) -> dict:
    """beta and loss_options as the loss's keyword arguments; one the loss does not take is an error, not ignored."""
    if "beta" in cfg.loss_options:
        raise PolmError("beta is set in loss_options", where="loss_options.beta", fix="Set the top-level beta instead.")
    owner = f"loss '{cfg.loss}'"   # skip=1: the first parameter is the log-probs
    given = check_options(fn, {} if cfg.beta is None else {"beta": cfg.beta}, where="", skip=1, owner=owner)
    return {**given, **check_options(fn, cfg.loss_options, where="loss_options", skip=1, owner=owner)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/dpo.yaml")
    parser.add_argument("--loss", help="preference loss (same as loss=NAME)")
    parser.add_argument("--skip-invalid", action="store_true", help="count and skip malformed or identical pairs")


def run(args: argparse.Namespace) -> int:
    extra = (["data.skip_invalid=true"] if args.skip_invalid else []) + ([f"loss={args.loss}"] if args.loss else [])
    result = run_dpo(config_from_args(DPOConfig, args, extra))
    loss = result["final_loss"]   # None when a resumed run had no step left to train
    print(f"{result['loss']} finished: {result['steps']} steps, final loss {'n/a' if loss is None else f'{loss:.4f}'}; "
          f"model in {result['final_dir']}")
    return 0


def run_dpo(cfg: DPOConfig) -> dict:
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume=cfg.train.resume, overwrite=cfg.overwrite)
    seed_everything(cfg.train.seed)   # before the adapter's random init
    loss = PREFERENCE_LOSSES.entry(cfg.loss)
    loss_fn, kwargs = loss.obj, loss_kwargs(cfg, loss.obj)
    unpaired, needs_ref = loss.meta["unpaired"], loss.meta["needs_reference"]

    # 1. data: validate + encode before anything is written
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    train_ex, eval_ex, data_info = prepare_data(cfg, tokenizer, unpaired)

    # 2. policy (+ adapter) and its reference
    model = load_model(cfg.model)
    if cfg.method != "full":
        model = attach_adapter(model, cfg.lora, gradient_checkpointing=cfg.model.gradient_checkpointing)
    collate = make_collate(cfg, tokenizer, unpaired)
    reference = None
    if needs_ref:
        reference, data_info["reference"] = build_reference(cfg, model, tokenizer, train_ex + eval_ex, collate)

    # 3. the step: policy log-probs of [chosen..., rejected...] (or [examples..., KL samples...]) → loss
    step = make_step(model, loss_fn, kwargs, reference, unpaired, cfg.loss_chunk_size or None)
    batches = BatchStream(train_ex, collate, cfg.train.micro_batch_size, seed=cfg.train.seed)
    device = next(model.parameters()).device
    eval_fn = make_heldout_eval(step, eval_ex, collate, cfg.train.micro_batch_size, device) if eval_ex else None

    lineage = {"model": cfg.model.name, "loss": cfg.loss, "loss_params": kwargs, "data": data_info}
    with run_directory(run_dir, cfg, recipe="dpo", overwrite=cfg.overwrite, lineage=lineage):
        result = train(model=model, step_fn=step, batches=batches, cfg=cfg.train, run_dir=run_dir, eval_fn=eval_fn)
        final_dir = save_final(model, tokenizer, run_dir, card=model_card(cfg, run_dir, kwargs),
                               prompt_format=trained_prompt_format(tokenizer, chat=cfg.data.chat))
        plot_metrics(run_dir)
    return {"steps": result.steps, "final_loss": result.final_loss, "losses": result.losses, "loss": cfg.loss,
            "final_dir": str(final_dir), "model": model, "run_dir": str(run_dir), "data": data_info}


def prepare_data(cfg: DPOConfig, tokenizer, unpaired: bool) -> tuple[list[dict], list[dict], dict]:
    """Load + validate + encode; split off a held-out part when asked; KTO examples get a KL sample."""
    loaded = load_preferences(cfg.data.train, unpaired=unpaired, skip_invalid=cfg.data.skip_invalid)
    if loaded.skipped:
        print(summarize_skips(loaded))
    records, eval_records = loaded.records, []
    if cfg.data.eval:
        eval_records = load_preferences(cfg.data.eval, unpaired=unpaired, skip_invalid=cfg.data.skip_invalid).records
    elif cfg.data.eval_fraction > 0:
        records, eval_records = split_by_prompt(records, cfg.data.eval_fraction, cfg.train.seed)
    encode = encode_unpaired if unpaired else encode_pairs
    opts = dict(max_length=cfg.data.max_length, chat=cfg.data.chat)
    examples, stats = encode(records, tokenizer, **opts)
    if stats.prompt_too_long:
        print(f"Preference data '{cfg.data.train}': {stats.summary()}")
    if not examples:
        raise PolmError(f"no example is left from '{cfg.data.train}' after tokenization ({stats.summary()})",
                        fix="Raise data.max_length.")
    eval_examples = encode(eval_records, tokenizer, **opts)[0] if eval_records else []
    if unpaired:
        for part in (examples, eval_examples):
            for ex, kl in zip(part, mismatched(part, cfg.data.max_length)):
                ex["kl"] = kl
    info = {"train": cfg.data.train, "train_sha256": records_sha256(loaded.records), "examples": len(examples),
            "eval_examples": len(eval_examples), "skipped_invalid": len(loaded.skipped),
            "skipped_prompt_too_long": stats.prompt_too_long, "truncated": stats.truncated}
    return examples, eval_examples, info


def sequences_of(example: dict) -> list[dict]:
    """The sequences one example contributes to a forward: (chosen, rejected) or (example, KL sample)."""
    if "chosen" in example:
        return [example["chosen"], example["rejected"]]
    return [example, example["kl"]]


def make_collate(cfg: DPOConfig, tokenizer, unpaired: bool):
    """examples -> one batch of [first sequences..., second sequences...] (+ labels, ref log-probs)."""
    def collate(examples: list[dict]) -> dict:
        first, second = zip(*(sequences_of(ex) for ex in examples))
        seqs = [*first, *second]
        batch = pack_collate(seqs) if cfg.data.packing else pad_collate(seqs, tokenizer.pad_token_id)
        if unpaired:
            batch["desirable"] = torch.tensor([ex["desirable"] for ex in examples])
        if all("ref" in ex for ex in examples):
            batch["ref_logps"] = torch.tensor([ex["ref"][0] for ex in examples] + [ex["ref"][1] for ex in examples])
        return batch
    return collate


def make_step(model, loss_fn, kwargs: dict, reference: FrozenModel | None, unpaired: bool, chunk: int | None):
    """The DPO step; the reference log-probs are the batch's precomputed `ref_logps` when it has them."""
    def step(batch: dict) -> StepOutput:
        logps, tokens = completion_logps(model, batch, chunk)
        ref = batch.get("ref_logps")
        if ref is None and reference is not None:
            ref = reference.sequence_logps(batch, chunk)[0]
        n = logps.shape[0] // 2
        if unpaired:
            lp = UnpairedLogps(logps[:n], ref[:n], batch["desirable"], logps[n:], ref[n:])
        else:
            lp = PairLogps(logps[:n], logps[n:], tokens[:n], tokens[n:],
                           None if ref is None else ref[:n], None if ref is None else ref[n:])
        out = loss_fn(lp, **kwargs)
        return StepOutput(loss_sum=out.losses.sum(), count=n, metrics={k: float(v) for k, v in out.metrics.items()})
    return step


def build_reference(cfg: DPOConfig, model, tokenizer, examples: list[dict], collate) -> tuple[FrozenModel | None, dict]:
    """The reference for cfg.reference.mode; precompute stores each example's ref log-probs in ex['ref']
    and returns no model (training then runs no reference forward)."""
    peft = callable(getattr(model, "disable_adapter", None))
    mode = cfg.reference.mode
    if mode == "auto":
        mode = "adapter" if peft else "copy"
    if mode == "adapter":
        return FrozenModel.adapter_disabled(model), {"mode": mode}
    if mode == "copy":
        return FrozenModel.copy_of(model), {"mode": mode}
    # before the first update the policy (adapters off, or itself) IS the reference
    source = resolve_path(cfg.model.name)
    once = FrozenModel.adapter_disabled(model, source=source) if peft else FrozenModel.initial(model, source=source)
    seqs = [s for ex in examples for s in sequences_of(ex)]
    device = next(model.parameters()).device
    # the pass runs under the loop's autocast: the policy's step-1 log-probs must equal these exactly
    precision = resolve_precision(cfg.train.precision, device)
    key = once.cache_key([s["input_ids"] for s in seqs], getattr(tokenizer, "chat_template", None),
                         {"labels": records_sha256([{"l": s["labels"]} for s in seqs]), "dtype": cfg.model.dtype,
                          "precision": precision})
    pair_collate = (lambda s: pack_collate(s)) if cfg.data.packing else (lambda s: pad_collate(s, tokenizer.pad_token_id))

    def compute() -> dict[str, torch.Tensor]:
        with autocast_context(precision, device):
            return {"logps": once.sequence_logps_of(seqs, pair_collate, cfg.reference.batch_size, cfg.loss_chunk_size or None)}

    cached, hit = cached_outputs(key, Path(cfg.reference.cache_dir), compute)
    for ex, ref in zip(examples, cached["logps"].view(-1, 2).tolist()):
        ex["ref"] = ref
    return None, {"mode": "precompute", "cache_key": key, "cache_hit": hit}


def model_card(cfg: DPOConfig, run_dir: Path, params: dict) -> str:
    """README of `final/` (a PEFT adapter or a full model), naming the loss and its parameters."""
    kind = "full model" if cfg.method == "full" else f"{cfg.method.upper()} adapter (r={cfg.lora.r})"
    return (f"# {run_dir.name}\n\nPreference-optimised (`{cfg.loss}`, {params or 'default parameters'}) from "
            f"`{cfg.model.name}` by polm ({kind}).\n\n- data: `{cfg.data.train}`\n- steps: {cfg.train.max_steps}, "
            f"lr {cfg.train.lr}\n\nLoad with `polm generate --model path`, `peft.AutoPeftModelForCausalLM` "
            "(adapter) or `transformers.AutoModelForCausalLM` (full model).\n")
