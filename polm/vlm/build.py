"""A composed VLM from config sections: which model (composed or from an earlier stage), and which
component trains at which learning rate. Shared by the recipes that train a VLM."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from polm.errors import PolmError
from polm.models import LoraConfig, ModelConfig, attach_adapter, load_model, load_tokenizer, merge_adapter
from polm.vlm.model import ComposedVLM, compose, load_vlm
from polm.vlm.towers import set_trainable


@dataclass
class TowerConfig:
    name: str = "efficientnet-lite0"        # a registered tower (polm.vlm.towers.TOWERS)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProjectorConfig:
    name: str = "mlp2x_gelu"                # mlp2x_gelu | pixel_shuffle | resampler
    options: dict[str, Any] = field(default_factory=dict)
    out_dim: int | None = None              # None: the LM's width (anything else must equal it)


@dataclass
class VLMModelConfig:
    init: str | None = None                 # a polm VLM directory (an earlier stage's final/) to start from
    hf: str | None = None                   # a transformers VLM (AutoModelForImageTextToText) to train instead
    lm: ModelConfig = field(default_factory=ModelConfig)
    tower: TowerConfig = field(default_factory=TowerConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)


@dataclass
class Component:
    train: bool = False
    lr: float | None = None                 # None: train.lr


@dataclass
class LLMComponent:
    train: Literal["none", "full", "lora"] = "none"
    lr: float | None = None


@dataclass
class Components:
    vision: Component = field(default_factory=Component)
    projector: Component = field(default_factory=lambda: Component(train=True))
    llm: LLMComponent = field(default_factory=LLMComponent)


def check_components(c: Components) -> None:
    if not (c.vision.train or c.projector.train or c.llm.train != "none"):
        raise PolmError("every component is frozen, so nothing would train", where="components",
                        fix="Set components.projector.train=true (stage 1) and/or components.llm.train=lora.")
    for name, lr in (("vision", c.vision.lr), ("projector", c.projector.lr), ("llm", c.llm.lr)):
        if lr is not None and lr <= 0:
            raise PolmError(f"components.{name}.lr must be positive, got {lr}")


def build_vlm(m: VLMModelConfig, c: Components, lora: LoraConfig) -> tuple[ComposedVLM, Any]:
    """(VLM, tokenizer): from m.init, or composed from the LM, tower and projector settings; then each
    component frozen or opened per `c` (the LM fully, or through a fresh LoRA adapter)."""
    if m.init:
        vlm, tokenizer = load_vlm(m.init, lm_config=m.lm)
        if c.llm.train != "none":
            vlm.lm = merge_adapter(vlm.lm)    # an earlier stage's adapter becomes part of the base
    else:
        tokenizer = load_tokenizer(m.lm.name, m.lm.trust_remote_code)
        vlm = compose(load_model(m.lm), tower=m.tower.name, tower_options=m.tower.options,
                      projector=m.projector.name, projector_options=m.projector.options,
                      projector_out_dim=m.projector.out_dim)
    vlm.lm.requires_grad_(c.llm.train == "full")
    if c.llm.train == "lora":
        vlm.lm = attach_adapter(vlm.lm, lora, gradient_checkpointing=m.lm.gradient_checkpointing)
    set_trainable(vlm.tower, c.vision.train)
    vlm.projector.requires_grad_(c.projector.train)
    return vlm, tokenizer


def component_groups(vlm: ComposedVLM, c: Components, lr: float) -> list[dict]:
    """One optimizer group per trained component, at c.<name>.lr (as a scale of the base `lr`)."""
    groups = []
    for comp, module in ((c.vision, vlm.tower), (c.projector, vlm.projector), (c.llm, vlm.lm)):
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr_scale": (comp.lr or lr) / lr})
    return groups


def frozen_lm_name(m: VLMModelConfig, c: Components, vlm: ComposedVLM) -> str | None:
    """The LM's reference when training left it untouched (so final/ need not copy its weights)."""
    if c.llm.train != "none":
        return None
    return vlm.spec.lm_name if m.init else m.lm.name
