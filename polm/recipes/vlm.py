"""Vision-language training of a composed VLM (vision tower -> projector -> causal LM).

    polm vlm configs/vlm_stage1.yaml    # stage 1: projector alignment (LLaVA: projector only, lr 1e-3)
    polm vlm configs/vlm_stage2.yaml    # stage 2: instruction tuning from stage 1 (LoRA on the LM)

One recipe, stages as config: each component (vision, projector, llm) is trained or frozen with its own
learning rate (`components.*`), the LM fully or through a LoRA adapter. The loss is image-grounded
next-token CE on answer tokens only (ITG; LLaVA, Liu et al. 2023, two-stage recipe of LLaVA-1.5),
normalised by the true number of target tokens across the accumulated batch. A frozen tower's features
are computed once per image and cached (polm.vlm.features). `final/` is a polm VLM (polm.vlm.model).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from polm.config import add_config_arguments, config_from_args
from polm.errors import PolmError
from polm.models import LoraConfig, merge_adapter, resolve_device
from polm.ops.logprobs import causal_lm_loss
from polm.rundir import check_output_dir, run_directory
from polm.train.batches import BatchStream
from polm.train.config import TrainConfig
from polm.train.heldout import make_heldout_eval, with_perplexity
from polm.train.loop import StepOutput, seed_everything, train
from polm.train.plots import plot_metrics
from polm.vlm.build import (
    Components,
    VLMModelConfig,
    build_vlm,
    check_components,
    component_groups,
    frozen_lm_name,
)
from polm.vlm.collate import encode_image_records, vlm_collate
from polm.vlm.data import load_image_records, record_images
from polm.vlm.eval import evaluate_captioning, evaluate_classification
from polm.vlm.features import FeatureCache, image_inputs
from polm.vlm.model import ComposedVLM, save_vlm
from polm.vlm.runners import ComposedRunner, TransformersRunner


@dataclass
class VLMData:
    train: str = "builtin:mnist?split=train"
    eval: str | None = None
    eval_fraction: float = 0.0
    max_length: int = 256
    feature_cache: str | None = None        # a folder for the frozen tower's features (shared across stages)


@dataclass
class VLMEval:
    task: Literal["classification", "captioning"] = "classification"
    data: str | None = None                 # labelled test records (e.g. builtin:fashion-mnist?split=test&n=500)
    exemplars: str | None = None            # the k-shot pool (default: data.train); test images are removed from it
    shots: list[int] = field(default_factory=lambda: [0])
    methods: list[str] = field(default_factory=lambda: ["exact_match", "loglik"])
    labels: list[str] | None = None         # the label set (default: the test set's labels)
    max_new_tokens: int = 16
    batch_size: int = 8
    seed: int = 0


@dataclass
class VLMConfig:
    output_dir: str = "runs/vlm"
    model: VLMModelConfig = field(default_factory=VLMModelConfig)
    components: Components = field(default_factory=Components)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: VLMData = field(default_factory=VLMData)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: VLMEval = field(default_factory=VLMEval)
    # loss weights (polm.losses.vlm): itg alone is token-normalised; with itc / itm the mixture is
    # normalised per example
    objectives: dict[str, float] = field(default_factory=lambda: {"itg": 1.0})
    loss_chunk_size: int = 1024
    overwrite: bool = False

    def validate(self) -> None:
        c = self.components
        if self.model.hf and self.model.init:
            raise PolmError("model.hf and model.init are both set", where="model",
                            fix="model.hf trains a transformers VLM; model.init continues a composed polm VLM. Set one.")
        from polm.losses.vlm import VLM_LOSSES

        for name, weight in self.objectives.items():
            if name not in VLM_LOSSES or not isinstance(weight, (int, float)) or weight < 0:
                raise PolmError(f"objectives.{name}={weight!r} is not a weight >= 0 of a known loss",
                                where=f"objectives.{name}", fix=f"Losses: {', '.join(VLM_LOSSES.names())}.")
        if not any(self.objectives.values()):
            raise PolmError("every objective weight is 0", where="objectives", fix="Set e.g. objectives.itg=1.")
        if self.model.hf and set(k for k, w in self.objectives.items() if w) != {"itg"}:
            raise PolmError("a transformers VLM (model.hf) trains the ITG objective only", where="objectives")
        if not 0 <= self.data.eval_fraction < 1:
            raise PolmError(f"data.eval_fraction must be in [0, 1), got {self.data.eval_fraction}")
        check_components(c)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/vlm_stage1.yaml")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate model.init (or the composed model) on eval.data without training")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(VLMConfig, args)
    if args.eval_only:
        results = run_vlm_eval(cfg)
        for name, summary in results.items():
            print(f"{name}: {summary['value']:.1%} [{summary['ci_low']:.1%}, {summary['ci_high']:.1%}] "
                  f"(n={summary['n']})")
        return 0
    result = run_vlm(cfg)
    loss = result["final_loss"]
    print(f"VLM training finished: {result['steps']} steps, final loss {'n/a' if loss is None else f'{loss:.4f}'}; "
          f"model in {result['final_dir']}")
    return 0


def build_model(cfg: VLMConfig) -> tuple[ComposedVLM, Any]:
    return build_vlm(cfg.model, cfg.components, cfg.lora)


def param_groups(vlm: ComposedVLM, cfg: VLMConfig) -> list[dict]:
    return component_groups(vlm, cfg.components, cfg.train.lr)


def run_vlm(cfg: VLMConfig) -> dict:
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume=cfg.train.resume, overwrite=cfg.overwrite)
    seed_everything(cfg.train.seed)
    # 1. data: records and their images, read and checked before any model loads
    records, eval_records = load_data(cfg)
    if cfg.model.hf:
        return run_transformers_vlm(cfg, run_dir, records, eval_records)

    # 2. model: tower + projector + LM, each component frozen or trained as configured
    vlm, tokenizer = build_model(cfg)
    # 3. tokens: ids with image placeholders + answer-only labels (a cut into image tokens stops here)
    train_examples, eval_examples, data_info = encode_data(cfg, records, eval_records, tokenizer,
                                                           vlm.spec.tokens_per_image)
    cache = None if cfg.components.vision.train else FeatureCache(vlm.tower, cfg.data.feature_cache)
    if cache is not None:   # each distinct image through the frozen tower once, before training
        cache.get([img for ex in train_examples + eval_examples for img in ex["images"]])
        data_info["features_computed"] = cache.computed
    image_input = image_inputs(vlm.tower, cache)

    def collate(examples: list[dict]) -> dict:
        return vlm_collate(examples, tokenizer.pad_token_id, image_input)

    # 4. the loss: summed answer-token CE of the LM on the spliced embeddings (chunked over the vocabulary),
    #    or the weighted ITG / ITC / ITM mixture per example
    chunk = cfg.loss_chunk_size or None
    groups = param_groups(vlm, cfg)

    def step(batch: dict) -> StepOutput:
        inputs = vlm.lm_inputs(batch)
        loss_sum, n_targets = causal_lm_loss(vlm.lm, {**inputs, "labels": batch["labels"]}, chunk_size=chunk)
        return StepOutput(loss_sum=loss_sum, count=n_targets)

    mixture = any(w for k, w in cfg.objectives.items() if k != "itg")
    if mixture:
        step, heads = pretraining_step(cfg, vlm, tokenizer.pad_token_id)
        projector_lr = cfg.components.projector.lr or cfg.train.lr   # the heads learn at the projector's rate
        groups.append({"params": list(heads.parameters()), "lr_scale": projector_lr / cfg.train.lr})

    # 5. train on the shared loop; final/ is the VLM (the LM by reference when it stayed frozen)
    def save(run_dir: Path) -> Path:
        return save_vlm(vlm.eval(), tokenizer, run_dir / "final", card=model_card(cfg, run_dir),
                        lm_name=frozen_lm_name(cfg.model, cfg.components, vlm))

    def after(run_dir: Path) -> dict:
        runner = ComposedRunner(vlm, tokenizer, image_input)
        return evaluate(cfg, runner, run_dir, pool=records) if cfg.eval.data else {}

    lineage = {"model": cfg.model.init or cfg.model.lm.name, "data": data_info}
    result = train_and_save(cfg, run_dir, vlm, step, collate, (train_examples, eval_examples), groups, save,
                            lineage, after, token_loss=not mixture)
    return {**result, "tokenizer": tokenizer, "data": data_info}


def pretraining_step(cfg: VLMConfig, vlm: ComposedVLM, pad_id: int):
    """(step over the objectives' weighted mixture, normalised per example; the ITC/ITM heads it trains).
    ITM's negatives are sampled from torch's global generator, which checkpoints restore."""
    from polm.vlm.model import lm_width
    from polm.vlm.objectives import PretrainHeads, pretraining_losses

    heads = PretrainHeads(lm_width(vlm.lm)).to(next(vlm.lm.parameters()).device)

    def step(batch: dict) -> StepOutput:
        total, parts = pretraining_losses(vlm, heads, batch, cfg.objectives, pad_id=pad_id)
        n = batch["input_ids"].shape[0]
        return StepOutput(loss_sum=total * n, count=n, metrics={f"loss_{k}": v for k, v in parts.items()})

    return step, heads


def train_and_save(cfg: VLMConfig, run_dir: Path, model: torch.nn.Module, step, collate, examples: tuple[list, list],
                   groups: list[dict], save, lineage: dict, after=None, token_loss: bool = True) -> dict:
    """The shared loop in a run directory, then `save(run_dir)` -> final/ and `after(run_dir)` (evaluation).
    The held-out loss gets a perplexity when it is a token cross-entropy (`token_loss`)."""
    train_examples, eval_examples = examples
    batches = BatchStream(train_examples, collate, cfg.train.micro_batch_size, seed=cfg.train.seed)
    device = next(model.parameters()).device
    heldout = make_heldout_eval(step, eval_examples, collate, cfg.train.micro_batch_size, device) \
        if eval_examples else None
    eval_fn = with_perplexity(heldout) if heldout is not None and token_loss else heldout
    with run_directory(run_dir, cfg, recipe="vlm", overwrite=cfg.overwrite, lineage=lineage):
        result = train(model=model, step_fn=step, batches=batches, cfg=cfg.train, run_dir=run_dir, eval_fn=eval_fn,
                       params=groups)
        final_dir = save(run_dir)
        plot_metrics(run_dir)
        evals = after(run_dir) if after is not None else {}
    return {"steps": result.steps, "final_loss": result.final_loss, "final_dir": str(final_dir), "model": model,
            "run_dir": str(run_dir), "eval": evals}


def run_transformers_vlm(cfg: VLMConfig, run_dir: Path, records: list[dict], eval_records: list[dict]) -> dict:
    """The same recipe on a transformers VLM (model.hf): its processor encodes, its own forward splices."""
    from polm.models.save import save_pretrained_atomic
    from polm.vlm.hf import (
        attach_llm_lora,
        encode_hf_record,
        find_components,
        hf_collate,
        image_token_id,
        load_hf_vlm,
    )

    c = cfg.components
    # fp32 weights (train.precision autocasts) on model.lm.device, as the composed family's LM
    model, processor = load_hf_vlm(cfg.model.hf, device=resolve_device(cfg.model.lm.device))
    parts = find_components(model)
    model.requires_grad_(False)
    if c.llm.train == "lora":
        model = attach_llm_lora(model, cfg.lora, [name for name, _ in parts["llm"]])
    opened = {"vision": c.vision.train, "projector": c.projector.train, "llm": c.llm.train == "full"}
    for name in (n for n, on in opened.items() if on):
        for _, module in parts[name]:
            module.requires_grad_(True)
    groups = []
    for comp, name in ((c.vision, "vision"), (c.projector, "projector"), (c.llm, "llm")):
        params = [p for _, m in parts[name] for p in m.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr_scale": (comp.lr or cfg.train.lr) / cfg.train.lr})
    token = image_token_id(model, processor)

    def encode(recs: list[dict]) -> list[dict]:
        out = [encode_hf_record(r, processor, token, max_length=cfg.data.max_length) for r in recs]
        return [ex for ex in out if ex is not None]

    train_examples, eval_examples = encode(records), encode(eval_records)
    if not train_examples:
        raise PolmError(f"no training example is left from '{cfg.data.train}' after tokenization",
                        fix="Raise data.max_length.")
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    chunk = cfg.loss_chunk_size or None

    def step(batch: dict) -> StepOutput:
        loss_sum, n_targets = causal_lm_loss(model, batch, chunk_size=chunk)
        return StepOutput(loss_sum=loss_sum, count=n_targets)

    final: dict[str, torch.nn.Module] = {}

    def save(run_dir: Path) -> Path:
        """final/ as one full transformers model (a LoRA adapter merged in), loadable with
        AutoModelForImageTextToText + AutoProcessor alone."""
        final["model"] = merge_adapter(model).eval()
        return save_pretrained_atomic(final["model"], processor, run_dir / "final", card=model_card(cfg, run_dir),
                                      overwrite=True)

    data_info = {"train": cfg.data.train, "kept": len(train_examples), "eval_examples": len(eval_examples)}
    def after(run_dir: Path) -> dict:
        return evaluate(cfg, TransformersRunner(final["model"], processor), run_dir, pool=records) \
            if cfg.eval.data else {}

    result = train_and_save(cfg, run_dir, model, step, lambda ex: hf_collate(ex, pad_id),
                            (train_examples, eval_examples), groups, save, {"model": cfg.model.hf, "data": data_info},
                            after)
    return {**result, "model": final["model"], "tokenizer": processor, "data": data_info}


def evaluate(cfg: VLMConfig, runner, out_dir: Path, pool: list[dict] | None = None) -> dict:
    """eval.data for each eval.shots: classification accuracy per eval.methods, or captioning CIDEr-D / BLEU;
    `runner` wraps either family's model (polm.vlm.runners)."""
    test = [with_images(r) for r in load_image_records(cfg.eval.data)]
    source = cfg.eval.exemplars or cfg.data.train
    if pool is None or cfg.eval.exemplars:
        pool = [with_images(r) for r in load_image_records(source)] if any(cfg.eval.shots) else []
    e = cfg.eval
    if e.task == "captioning":
        return evaluate_captioning(runner, test, pool, out_dir, shots=e.shots, max_length=cfg.data.max_length,
                                   max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, seed=e.seed)
    return evaluate_classification(runner, test, pool, out_dir, shots=e.shots, methods=e.methods, labels=e.labels, max_length=cfg.data.max_length,
                                   max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, seed=e.seed)


def run_vlm_eval(cfg: VLMConfig) -> dict:
    """`--eval-only`: the model of model.hf, or of model.init (or composed from the model settings), evaluated
    into output_dir."""
    if not cfg.eval.data:
        raise PolmError("--eval-only needs eval.data", fix="Set eval.data=... (labelled test records).")
    if cfg.model.hf:
        from polm.vlm.hf import load_hf_vlm

        runner = TransformersRunner(*load_hf_vlm(cfg.model.hf, device=resolve_device(cfg.model.lm.device)))
        return evaluate(cfg, runner, Path(cfg.output_dir))
    vlm, tokenizer = build_model(cfg)
    cache = FeatureCache(vlm.tower, cfg.data.feature_cache) if not cfg.components.vision.train else None
    return evaluate(cfg, ComposedRunner(vlm, tokenizer, image_inputs(vlm.tower, cache)), Path(cfg.output_dir))


def load_data(cfg: VLMConfig) -> tuple[list[dict], list[dict]]:
    """(train, eval) normalized records with their images loaded (a missing or unreadable image stops here);
    the eval set from data.eval, or carved out of the train records with data.eval_fraction."""
    records = [with_images(r) for r in load_image_records(cfg.data.train)]
    eval_records = [with_images(r) for r in load_image_records(cfg.data.eval)] if cfg.data.eval else []
    if not cfg.data.eval and cfg.data.eval_fraction > 0:
        order = list(range(len(records)))
        random.Random(cfg.train.seed).shuffle(order)
        n_eval = max(1, int(len(records) * cfg.data.eval_fraction))
        eval_records, records = [records[i] for i in order[:n_eval]], [records[i] for i in order[n_eval:]]
    return records, eval_records


def with_images(record: dict) -> dict:
    return {**record, "images": record_images(record)}


def encode_data(cfg: VLMConfig, records: list[dict], eval_records: list[dict], tokenizer,
                tokens_per_image: int) -> tuple[list[dict], list[dict], dict]:
    examples, stats = encode_image_records(records, tokenizer, tokens_per_image, max_length=cfg.data.max_length)
    if not examples:
        raise PolmError(f"no training example is left from '{cfg.data.train}' after tokenization ({stats})",
                        fix="Raise data.max_length.")
    eval_examples = encode_image_records(eval_records, tokenizer, tokens_per_image,
                                         max_length=cfg.data.max_length)[0] if eval_records else []
    return examples, eval_examples, {"train": cfg.data.train, "eval": cfg.data.eval, **stats,
                                     "eval_examples": len(eval_examples)}


def model_card(cfg: VLMConfig, run_dir: Path) -> str:
    c = cfg.components
    if cfg.model.hf:
        return (f"# {run_dir.name}\n\nA fine-tune of the transformers VLM `{cfg.model.hf}` written by polm "
                f"(components: vision {c.vision.train}, projector {c.projector.train}, LM {c.llm.train}; a LoRA "
                "adapter is merged in).\n\nLoad: `transformers.AutoModelForImageTextToText.from_pretrained(path)` "
                "and `transformers.AutoProcessor.from_pretrained(path)`.\n")
    trained = ", ".join(f"{name} (lr {comp.lr or cfg.train.lr:g})" for name, comp, on in (
        ("vision tower", c.vision, c.vision.train), ("projector", c.projector, c.projector.train),
        (f"LM ({c.llm.train})", c.llm, c.llm.train != "none")) if on)
    return (f"# {run_dir.name}\n\nA polm composed VLM: tower `{cfg.model.tower.name}`, projector "
            f"`{cfg.model.projector.name}`, LM `{cfg.model.lm.name}`{f' (from {cfg.model.init})' if cfg.model.init else ''}.\n\n"
            f"- trained: {trained}\n- data: `{cfg.data.train}`\n- steps: {cfg.train.max_steps}\n\n"
            "Load: `polm.vlm.model.load_vlm(path)`; the layout is described in docs/vlm.md.\n")
