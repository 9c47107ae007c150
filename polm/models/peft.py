"""LoRA / DoRA / QLoRA adapters via peft: attach for training, merge into the base for export."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from polm.errors import PolmError


@dataclass
class LoraConfig:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    dora: bool = False          # weight-decomposed LoRA (Liu et al., 2024)
    rslora: bool = False        # rank-stabilised scaling alpha / sqrt(r)

    def validate(self) -> None:
        if self.r < 1:
            raise PolmError(f"lora.r must be at least 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise PolmError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise PolmError("lora.target_modules is empty", fix="Name at least one module, e.g. [q_proj, v_proj].")


def attach_adapter(model, cfg: LoraConfig, *, quantized: bool = False, gradient_checkpointing: bool = False,
                   task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None):
    """Wrap `model` in a trainable PEFT LoRA/DoRA adapter; the base weights stay frozen.

    task_type: peft's task ("SEQ_CLS" for a score model, whose `score` head peft then trains in full);
    modules_to_save: further modules trained in full and saved with the adapter.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in present]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise PolmError(f"lora.target_modules names modules the model does not have: {missing}",
                        fix=f"This model's linear layers are: {linear}.")
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), use_dora=cfg.dora,
                              use_rslora=cfg.rslora, task_type=task_type, bias="none",
                              modules_to_save=list(modules_to_save) if modules_to_save else None)
    model = get_peft_model(model, peft_cfg)
    if gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def merge_adapter(model):
    """Fold a PEFT adapter into its base weights and return the plain transformers model."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    return model.merge_and_unload()
