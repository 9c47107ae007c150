"""Preference optimisation of a composed VLM on image-conditioned pairs, with polm's DPO-family losses.

    polm vlm-dpo configs/vlm_dpo.yaml
    polm vlm-dpo configs/vlm_dpo.yaml loss=ipo beta=0.5

Per pair, the policy's and the reference's summed log-probs of the chosen and rejected answers given
the same image(s) and prompt go to a registered loss of polm.losses.preference (DPO, Rafailov et al.
2023; IPO, cDPO, robust, hinge, SimPO, ORPO, CPO; as applied to VLMs by e.g. RLHF-V / POVID). The
reference is the starting model: its log-probs are computed once, before the first update, so no
second model is kept. The loop divides the summed loss by the number of pairs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polm.config import add_config_arguments, config_from_args
from polm.errors import PolmError
from polm.losses import PREFERENCE_LOSSES, PairLogps
from polm.models import LoraConfig
from polm.registry import check_options
from polm.rundir import check_output_dir, run_directory
from polm.train.batches import BatchStream
from polm.train.config import TrainConfig
from polm.train.loop import StepOutput, autocast_context, resolve_precision, seed_everything, train
from polm.train.plots import plot_metrics
from polm.vlm.build import (
    Components,
    LLMComponent,
    VLMModelConfig,
    build_vlm,
    check_components,
    component_groups,
)
from polm.vlm.features import FeatureCache, image_inputs
from polm.vlm.model import save_vlm
from polm.vlm.preference import encode_pair, load_image_pairs, pair_collate, sequence_logps


@dataclass
class VLMDPOData:
    train: str = "builtin:fashion-mnist?split=train&n=1000&seed=2"   # a pairs file, or label pairs of a labelled source
    max_length: int = 256
    feature_cache: str | None = None


@dataclass
class VLMDPOConfig:
    output_dir: str = "runs/vlm_dpo"
    loss: str = "dpo"                 # a paired loss of polm.losses.preference (KTO's unpaired data is not read here)
    beta: float | None = None         # None: the loss's own default
    loss_options: dict[str, Any] = field(default_factory=dict)
    model: VLMModelConfig = field(default_factory=VLMModelConfig)
    components: Components = field(default_factory=lambda: Components(llm=LLMComponent(train="lora")))
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: VLMDPOData = field(default_factory=VLMDPOData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-6))
    overwrite: bool = False

    def validate(self) -> None:
        check_components(self.components)
        if self.loss in PREFERENCE_LOSSES and PREFERENCE_LOSSES.meta(self.loss)["unpaired"]:
            raise PolmError(f"loss '{self.loss}' reads unpaired data, and polm vlm-dpo trains on pairs",
                            where="loss", fix="Use a paired loss: dpo, ipo, cdpo, robust, hinge, simpo, orpo or cpo.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/vlm_dpo.yaml")


def run(args: argparse.Namespace) -> int:
    result = run_vlm_dpo(config_from_args(VLMDPOConfig, args))
    loss = result["final_loss"]
    print(f"VLM preference training finished: {result['steps']} steps, final loss "
          f"{'n/a' if loss is None else f'{loss:.4f}'}; model in {result['final_dir']}")
    return 0


def loss_kwargs(cfg: VLMDPOConfig, fn) -> dict:
    owner = f"loss '{cfg.loss}'"
    given = check_options(fn, {} if cfg.beta is None else {"beta": cfg.beta}, where="", skip=1, owner=owner)
    return {**given, **check_options(fn, cfg.loss_options, where="loss_options", skip=1, owner=owner)}


def run_vlm_dpo(cfg: VLMDPOConfig) -> dict:
    run_dir = Path(cfg.output_dir)
    check_output_dir(run_dir, resume=cfg.train.resume, overwrite=cfg.overwrite)
    seed_everything(cfg.train.seed)
    entry = PREFERENCE_LOSSES.entry(cfg.loss)
    kwargs = loss_kwargs(cfg, entry.obj)

    # 1. data: pairs and their images, checked before any model loads; 2. the VLM, components opened
    pairs = load_image_pairs(cfg.data.train, seed=cfg.train.seed)
    vlm, tokenizer = build_vlm(cfg.model, cfg.components, cfg.lora)
    encoded = [encode_pair(p, tokenizer, vlm.spec.tokens_per_image, max_length=cfg.data.max_length) for p in pairs]
    examples = [e for e in encoded if e is not None]
    if not examples:
        raise PolmError(f"no pair of '{cfg.data.train}' keeps both answers within data.max_length",
                        fix="Raise data.max_length.")
    cache = None if cfg.components.vision.train else FeatureCache(vlm.tower, cfg.data.feature_cache)
    image_input = image_inputs(vlm.tower, cache)

    def collate(batch_examples: list[dict]) -> dict:
        return pair_collate(batch_examples, tokenizer.pad_token_id, image_input)

    # 3. the reference: the starting model's log-probs of every answer, before any update
    if entry.meta["needs_reference"]:
        precompute_reference(cfg, vlm, examples, collate)

    # 4. the loss: a registered preference loss on (policy, reference) sequence log-probs per pair
    def step(batch: dict) -> StepOutput:
        logps, tokens = sequence_logps(vlm, batch)
        n, ref = logps.shape[0] // 2, batch.get("ref_logps")
        lp = PairLogps(logps[:n], logps[n:], tokens[:n], tokens[n:],
                       None if ref is None else ref[:n], None if ref is None else ref[n:])
        out = entry.obj(lp, **kwargs)
        return StepOutput(loss_sum=out.losses.sum(), count=n, metrics={k: float(v) for k, v in out.metrics.items()})

    # 5. train on the shared loop; final/ is the VLM
    batches = BatchStream(examples, collate, cfg.train.micro_batch_size, seed=cfg.train.seed)
    lineage = {"model": cfg.model.init or cfg.model.lm.name, "data": {"train": cfg.data.train, "pairs": len(examples)}}
    with run_directory(run_dir, cfg, recipe="vlm-dpo", overwrite=cfg.overwrite, lineage=lineage):
        result = train(model=vlm, step_fn=step, batches=batches, cfg=cfg.train, run_dir=run_dir,
                       params=component_groups(vlm, cfg.components, cfg.train.lr))
        card = (f"# {run_dir.name}\n\nA polm VLM tuned on image-conditioned preference pairs with loss `{cfg.loss}` "
                f"{kwargs} from `{cfg.model.init or cfg.model.lm.name}`.\n\nLoad: `polm.vlm.model.load_vlm(path)`.\n")
        final_dir = save_vlm(vlm.eval(), tokenizer, run_dir / "final", card=card)
        plot_metrics(run_dir)
    return {"steps": result.steps, "final_loss": result.final_loss, "final_dir": str(final_dir), "model": vlm,
            "tokenizer": tokenizer, "run_dir": str(run_dir), "pairs": len(examples)}


@torch.no_grad()
def precompute_reference(cfg: VLMDPOConfig, vlm, examples: list[dict], collate) -> None:
    """ex["ref"] = (chosen, rejected) Σ log p under the model as it starts, under the loop's autocast."""
    device = next(vlm.lm.parameters()).device
    precision = resolve_precision(cfg.train.precision, device)
    was_training = vlm.training
    vlm.eval()
    try:
        for start in range(0, len(examples), cfg.train.micro_batch_size):
            chunk = examples[start:start + cfg.train.micro_batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            with autocast_context(precision, device):
                logps = sequence_logps(vlm, batch)[0].float().cpu()
            n = len(chunk)
            for i, ex in enumerate(chunk):
                ex["ref"] = (float(logps[i]), float(logps[n + i]))
    finally:
        vlm.train(was_training)
