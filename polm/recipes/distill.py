"""Knowledge distillation: a student learns a teacher's next-token distributions (logit KD), offline on
a dataset or on-policy on its own samples (GKD).

    polm distill configs/distill_smollm2.yaml teacher.model=runs/sft-lora/final
    polm distill configs/distill_smollm2.yaml loss=jsd loss_options.beta=0.5 lmbda=0.5     # on-policy GKD
    polm distill configs/distill_smollm2.yaml loss=topk_kl teacher.cache=true              # cached teacher

Per target token t: (1-α) D(p_S(·|τ), p_T(·|τ)) + α CE(y_t) (+ γ · a hidden-state loss), summed over
target tokens and normalised by their number across the accumulated batch, with D a registered
divergence (polm.losses.distill: forward_kl, reverse_kl, jsd(β), tv, topk_kl) computed chunk by chunk
over the vocabulary (polm.ops.divergence). Offline (λ = 0) the targets are the dataset's completion
tokens; with λ > 0 each rollout is, with probability λ, the student's own samples (through the shared
generator, scored by the teacher token by token) and otherwise the dataset completions: GKD, Agarwal
et al. 2024. Logit KD: Hinton et al. 2015; reverse KL: MiniLLM, Gu et al. 2024. teacher.cache=true
stores the teacher's top-k log-probs per target token once (DistillKit), so training runs no teacher.
Simplified: on-policy rollouts use each record's first assistant turn; no τ² gradient scaling.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from polm.config import add_config_arguments, config_from_args
from polm.data.collate import pack_collate, pad_collate
from polm.data.loaders import load_records
from polm.data.templating import encode_records, trained_prompt_format
from polm.errors import PolmError
from polm.io import records_sha256
from polm.losses.distill import DISTILL_LOSSES, HIDDEN_LOSSES, distill_token_loss
from polm.models import LoraConfig, ModelConfig, attach_adapter, load_model, load_tokenizer
from polm.models.frozen import MODEL_KEYS, FrozenModel, cached_outputs
from polm.models.save import save_final
from polm.ops import IGNORE_INDEX, causal_targets
from polm.ops.divergence import chunked_rows_loss, target_rows
from polm.registry import check_options
from polm.rollout import build_generator
from polm.rollout.batch import collate_rollout
from polm.rollout.settings import RolloutSettings
from polm.rollout.stream import RolloutStream
from polm.rundir import check_output_dir, run_directory
from polm.train.batches import BatchStream
from polm.train.config import TrainConfig
from polm.train.loop import StepOutput, seed_everything, train
from polm.train.plots import plot_metrics


@dataclass
class TeacherConfig:
    model: str = ""                    # a polm output (runs/sft/final), a local directory, embedded name or hub id
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    cache: bool = False                # precompute its top-k log-probs per target token once, on disk
    cache_dir: str = "runs/cache/teacher"
    top_k: int = 64                    # token ids kept per target token by loss=topk_kl (and the cache)
    batch_size: int = 8                # examples per teacher forward while caching


@dataclass
class DistillData:
    train: str = "builtin:reasoning-gym/basic_arithmetic?n=2000&seed=0"
    max_length: int = 512
    truncation: Literal["right", "drop"] = "right"
    packing: bool = True               # offline KD only; on-policy batches are padded rollouts
    chat: bool = True
    prompt_suffix: str = ""
    system_prompt: str | None = None


@dataclass
class DistillConfig:
    output_dir: str = "runs/distill"
    method: Literal["full", "lora"] = "lora"
    model: ModelConfig = field(default_factory=ModelConfig)          # the student
    lora: LoraConfig = field(default_factory=LoraConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DistillData = field(default_factory=DistillData)
    loss: str = "forward_kl"           # forward_kl | reverse_kl | jsd | tv | topk_kl | package.module:function
    loss_options: dict = field(default_factory=dict)                 # e.g. {beta: 0.5} for jsd
    temperature: float = 1.0           # τ of both distributions
    ce_weight: float = 0.0             # α: mix of the hard-label cross-entropy
    hidden_loss: str | None = None     # mse | cosine on the last hidden state (same-width pairs)
    hidden_weight: float = 0.0
    lmbda: float = 0.0                 # GKD λ: probability that a rollout is the student's own samples
    rollout: RolloutSettings = field(default_factory=lambda: RolloutSettings(group_size=1, max_new_tokens=64))
    train: TrainConfig = field(default_factory=TrainConfig)
    loss_chunk_size: int = 256         # rows of [*, V] logits at a time; 0 = the student's plain logits
    overwrite: bool = False

    def validate(self) -> None:
        if not self.teacher.model:
            raise PolmError("no teacher model is given", where="teacher.model",
                            fix="Set teacher.model=<a polm output such as runs/sft/final, a directory or a model name>")
        try:
            loss = DISTILL_LOSSES.get(self.loss)
            if self.hidden_loss is not None:
                HIDDEN_LOSSES.get(self.hidden_loss)
        except PolmError as err:
            raise PolmError(err.what, where="loss" if "distillation" in err.what else "hidden_loss", fix=err.fix) from None
        check_options(loss, self.loss_options, where="loss_options", skip=1, owner=f"loss '{self.loss}'",
                      exclude=("teacher_logps", "topk_ids", "topk_logps"))
        beta = self.loss_options.get("beta", 0.5)
        if not (isinstance(beta, (int, float)) and 0 <= beta <= 1):
            raise PolmError(f"beta must be in [0, 1], got {beta}", where="loss_options.beta",
                            fix="0 is forward KL(teacher‖student), 1 reverse KL(student‖teacher), 0.5 the symmetric JSD")
        checks = [("temperature", self.temperature, self.temperature > 0, "the temperature τ must be > 0"),
                  ("ce_weight", self.ce_weight, 0 <= self.ce_weight <= 1, "ce_weight must be in [0, 1]"),
                  ("lmbda", self.lmbda, 0 <= self.lmbda <= 1, "lmbda (the on-policy probability) must be in [0, 1]"),
                  ("hidden_weight", self.hidden_weight, self.hidden_weight >= 0, "hidden_weight must be >= 0"),
                  ("teacher.top_k", self.teacher.top_k, self.teacher.top_k >= 1, "teacher.top_k must be at least 1")]
        for key, value, ok, what in checks:
            if not ok:
                raise PolmError(f"{what}, got {value}", where=key)
        if self.teacher.cache and (self.lmbda > 0 or self.meta()["teacher"] != "topk"):
            raise PolmError("teacher.cache=true stores the teacher's top-k log-probs of a fixed dataset",
                            where="teacher.cache", fix="Use it with loss=topk_kl and lmbda=0 (offline KD)")
        if self.lmbda > 0:
            self.rollout.check(self.train)

    def meta(self) -> dict:
        return DISTILL_LOSSES.meta(self.loss)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/distill_smollm2.yaml")


def run(args: argparse.Namespace) -> int:
    result = run_distill(config_from_args(DistillConfig, args))
    loss = result["final_loss"]
    print(f"distillation finished: {result['steps']} steps, final loss {'n/a' if loss is None else f'{loss:.4f}'}; "
          f"model in {result['final_dir']}")
    return 0


def run_distill(cfg: DistillConfig) -> dict:
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume=cfg.train.resume, overwrite=cfg.overwrite)
    seed_everything(cfg.train.seed)

    # 1. data and teacher: a tokenizer mismatch or bad record surfaces before the student loads
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    examples, data_info = prepare_data(cfg, tokenizer)
    teacher = load_teacher(cfg)
    teacher.check_vocabulary(tokenizer, teacher=cfg.teacher.model, student=cfg.model.name)

    # 2. student (+ adapter)
    model = load_model(cfg.model)
    teacher.check_vocabulary(tokenizer, model, teacher=cfg.teacher.model, student=cfg.model.name)
    if cfg.method == "lora":
        model = attach_adapter(model, cfg.lora, gradient_checkpointing=cfg.model.gradient_checkpointing)
    pad_id = tokenizer.pad_token_id

    # 3. what the student trains on: the dataset (teacher live or cached), or GKD rollouts
    cache_info: dict = {}
    if cfg.lmbda > 0:
        batches = gkd_stream(cfg, model, tokenizer, examples)
    else:
        collate = (lambda ex: pack_collate(ex)) if cfg.data.packing else (lambda ex: pad_collate(ex, pad_id))
        if cfg.teacher.cache:   # training then runs no teacher forward: the teacher is let go
            collate, cache_info = cached_teacher(cfg, teacher, tokenizer, examples, collate)
            teacher = None
        batches = BatchStream(examples, collate, cfg.train.micro_batch_size, seed=cfg.train.seed)

    # 4. the loss: the divergence per target token, chunked over the vocabulary
    step = make_step(cfg, model, teacher)

    lineage = {"model": cfg.model.name, "teacher": cfg.teacher.model, "data": data_info, "teacher_cache": cache_info}
    with run_directory(run_dir, cfg, recipe="distill", overwrite=cfg.overwrite, lineage=lineage):
        result = train(model=model, step_fn=step, batches=batches, cfg=cfg.train, run_dir=run_dir)
        fmt = trained_prompt_format(tokenizer, chat=cfg.data.chat, suffix=cfg.data.prompt_suffix,
                                    system=cfg.data.system_prompt)
        final_dir = save_final(model, tokenizer, run_dir, card=model_card(cfg, run_dir), prompt_format=fmt)
        plot_metrics(run_dir)
    return {"steps": result.steps, "final_loss": result.final_loss, "losses": result.losses, "model": model,
            "final_dir": str(final_dir), "run_dir": str(run_dir), "data": data_info, "teacher_cache": cache_info}


def load_teacher(cfg: DistillConfig) -> FrozenModel:
    """The teacher as a `FrozenModel` (eval mode, no gradients) on the student's device; a teacher that
    does not load is one error naming teacher.model."""
    try:
        return FrozenModel.load(cfg.teacher.model, device=cfg.model.device, dtype=cfg.teacher.dtype)
    except (PolmError, OSError, ValueError) as err:
        what, fix = (err.what, err.fix) if isinstance(err, PolmError) else (str(err).splitlines()[0], None)
        raise PolmError(f"the teacher does not load: {what}", where="teacher.model",
                        fix=fix or "Point teacher.model at a model directory, a polm output or an embedded name") from None


def prepare_data(cfg: DistillConfig, tokenizer) -> tuple[list[dict], dict]:
    """Records (prompt/completion or messages) → token ids with labels on the completion tokens only."""
    loaded = load_records(cfg.data.train, allowed={"messages", "prompt_completion"})
    fmt = trained_prompt_format(tokenizer, chat=cfg.data.chat, suffix=cfg.data.prompt_suffix,
                                system=cfg.data.system_prompt)
    examples, stats = encode_records([fmt.wrap_record(r) for r in loaded.records], tokenizer,
                                     max_length=cfg.data.max_length, truncation=cfg.data.truncation, chat=cfg.data.chat)
    if not examples:
        raise PolmError(f"no training example is left from '{cfg.data.train}' after tokenization ({stats})",
                        fix="Raise data.max_length or use data.truncation=right.")
    return examples, {"train": cfg.data.train, "train_sha256": records_sha256(loaded.records),
                      "examples": len(examples), "encode": vars(stats)}


def make_step(cfg: DistillConfig, model, teacher: FrozenModel | None):
    """step(batch): Σ over target tokens of the distillation loss; the teacher runs live unless the batch
    carries its cached top-k (teacher_ids / teacher_logps, one row per target token)."""
    divergence, kind = DISTILL_LOSSES.get(cfg.loss), cfg.meta()["teacher"]
    hidden_fn = HIDDEN_LOSSES.get(cfg.hidden_loss) if cfg.hidden_loss and cfg.hidden_weight > 0 else None
    chunk, tau = cfg.loss_chunk_size or None, cfg.temperature

    def step(batch: dict) -> StepOutput:
        packed = "attention_mask" not in batch
        targets = causal_targets(batch["labels"], batch.get("position_ids") if packed else None)
        inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
        student = target_rows(model, inputs, targets, chunked=chunk is not None, states=hidden_fn is not None)
        live = teacher.target_rows(inputs, targets, states=hidden_fn is not None) if teacher is not None else None

        def teacher_rows(i: int, j: int) -> tuple[torch.Tensor, ...]:
            if live is None:
                return batch["teacher_ids"][i:j], batch["teacher_logps"][i:j]
            with torch.no_grad():
                logps = torch.log_softmax(live.logits(i, j).float() / tau, dim=-1)
                top = logps.topk(cfg.teacher.top_k, dim=-1) if kind == "topk" else None
            return (logps,) if top is None else (top.indices, top.values)

        def row_loss(z: torch.Tensor, i: int, j: int) -> torch.Tensor:
            return distill_token_loss(z, student.targets[i:j], teacher_rows(i, j), divergence, temperature=tau,
                                      ce_weight=cfg.ce_weight, options=cfg.loss_options)

        loss = chunked_rows_loss(student.hidden, student.weight, row_loss, chunk)
        if hidden_fn is not None:
            loss = loss + cfg.hidden_weight * hidden_fn(student.states.float(), live.states.float()).sum()
        return StepOutput(loss_sum=loss, count=int(student.targets.numel()))

    return step


def cached_teacher(cfg: DistillConfig, teacher: FrozenModel, tokenizer, examples: list[dict], collate):
    """(a collate that adds each example's cached teacher rows, cache info): the teacher's top-k ids and
    log-probs at τ for every target token, computed once and stored by `cached_outputs`, keyed by the
    teacher's fingerprint, every token sequence and label mask, the chat template, k and τ."""
    key = teacher.cache_key([ex["input_ids"] for ex in examples], getattr(tokenizer, "chat_template", None),
                            {"labels": records_sha256([{"l": ex["labels"]} for ex in examples]), "k": cfg.teacher.top_k,
                             "temperature": cfg.temperature, "dtype": cfg.teacher.dtype, "kind": "distill-topk"})

    def compute() -> dict[str, torch.Tensor]:
        ids, logps = [], []
        for start in range(0, len(examples), cfg.teacher.batch_size):
            batch = pad_collate(examples[start:start + cfg.teacher.batch_size], tokenizer.pad_token_id)
            batch = {k: v.to(teacher.device) for k, v in batch.items()}
            top = teacher.topk_logprobs({k: batch[k] for k in MODEL_KEYS if k in batch}, causal_targets(batch["labels"]),
                                        cfg.teacher.top_k, temperature=cfg.temperature,
                                        chunk_size=cfg.loss_chunk_size or None)
            ids.append(top[0].to(torch.int32))
            logps.append(top[1])
        return {"ids": torch.cat(ids), "logps": torch.cat(logps)}

    cached, hit = cached_outputs(key, Path(cfg.teacher.cache_dir), compute)
    start = 0
    for ex in examples:   # each example's rows: its targets, in order (the order of any batch's target rows)
        n = sum(label != IGNORE_INDEX for label in ex["labels"][1:])
        ex["teacher_rows"] = (start, start + n)
        start += n
    ids, logps = cached["ids"].long(), cached["logps"]

    def with_teacher(batch_examples: list[dict]) -> dict:
        rows = [torch.arange(*ex["teacher_rows"]) for ex in batch_examples]
        picked = torch.cat(rows)
        return {**collate(batch_examples), "teacher_ids": ids[picked], "teacher_logps": logps[picked]}

    return with_teacher, {"cache_key": key, "cache_hit": hit, "rows": start}


def gkd_stream(cfg: DistillConfig, model, tokenizer, examples: list[dict]) -> RolloutStream:
    """GKD's data: each rollout is, with probability λ (a seeded draw per rollout, so a resumed run makes
    the same choices), `group_size` samples per prompt from the student through the shared generator,
    otherwise the dataset's completions (each repeated group_size times)."""
    prompts = []
    for ex in examples:   # the prompt ends where the first target span starts; the completion is that span
        start = next(i for i, label in enumerate(ex["labels"]) if label != IGNORE_INDEX)
        stop = next((i for i in range(start, len(ex["labels"])) if ex["labels"][i] == IGNORE_INDEX), len(ex["labels"]))
        prompts.append({"prompt_ids": ex["input_ids"][:start], "completion_ids": ex["input_ids"][start:stop]})
    generator = build_generator(cfg.rollout.backend, model, tokenizer, model_path=cfg.model.name)
    G, pad_id = cfg.rollout.group_size, tokenizer.pad_token_id

    def make_rollout(records: list[dict], index: int) -> tuple[list[dict], dict[str, float]]:
        draw = torch.rand((), generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + index))
        if float(draw) < cfg.lmbda:
            generator.sync_weights()
            completions = generator.generate([r["prompt_ids"] for r in records], cfg.rollout.sampling(),
                                             seed=cfg.train.seed + index)
            out = [{"prompt_ids": records[c.prompt_index]["prompt_ids"], "completion_ids": c.token_ids}
                   for c in completions]
        else:
            out = [{"prompt_ids": r["prompt_ids"], "completion_ids": r["completion_ids"]} for r in records for _ in range(G)]
        lengths = [len(e["completion_ids"]) for e in out]
        return out, {"onpolicy": float(float(draw) < cfg.lmbda), "completion/length": sum(lengths) / len(lengths)}

    def collate(batch_examples: list[dict]) -> dict:
        b = collate_rollout(batch_examples, pad_id)
        labels = torch.full_like(b["input_ids"], IGNORE_INDEX)
        labels[:, -b["completion_ids"].shape[1]:] = b["completion_ids"]
        return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                "position_ids": b["position_ids"], "labels": labels}

    return RolloutStream(prompts, make_rollout, collate, prompts_per_rollout=cfg.rollout.prompts_per_rollout,
                         group_size=G, epochs=1, micro_batch_size=cfg.train.micro_batch_size,
                         grad_accum=cfg.train.grad_accum, seed=cfg.train.seed)


def model_card(cfg: DistillConfig, run_dir: Path) -> str:
    """README of `final/`: the student, its teacher and the loss it was distilled with."""
    kind = "full model" if cfg.method == "full" else f"LoRA adapter (r={cfg.lora.r}, alpha={cfg.lora.alpha})"
    mode = f"on-policy GKD (λ={cfg.lmbda})" if cfg.lmbda > 0 else "offline logit KD"
    return (f"# {run_dir.name}\n\nDistilled from the teacher `{cfg.teacher.model}` into `{cfg.model.name}` by polm "
            f"({kind}).\n\n- method: {mode}\n- loss: `{cfg.loss}` {cfg.loss_options or ''}, temperature "
            f"{cfg.temperature}, hard-label CE weight {cfg.ce_weight}\n- data: `{cfg.data.train}`\n"
            f"- steps: {cfg.train.max_steps}, lr {cfg.train.lr}, micro-batch {cfg.train.micro_batch_size} x "
            f"accumulation {cfg.train.grad_accum}\n\nLoad with `polm generate --model path`, "
            "`peft.AutoPeftModelForCausalLM` (adapter) or `transformers.AutoModelForCausalLM` (full model).\n")
