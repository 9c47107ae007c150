"""Merging LoRA adapters into one adapter (`output_format: adapter`), exact where the method is linear.

For adapters Δᵢ = sᵢ·Bᵢ·Aᵢ on one base, linear and task-arithmetic merges are θ_base + Σᵢ cᵢΔᵢ with
cᵢ = wᵢ/Σw (linear) or scale·wᵢ (÷Σw with normalize) for task arithmetic. That sum is itself a LoRA
update of rank Σᵢ rᵢ: A = [A₁; A₂; …] (rows stacked), B = [c₁s₁B₁, c₂s₂B₂, …] (columns stacked), with
scaling 1 (lora_alpha = r per module). TIES, DARE and SLERP act entry by entry and have no low-rank
form, so they need `output_format: model`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from polm.errors import PolmError
from polm.merge.plan import MergePlan, tensor_parameters
from polm.merge.sources import AdapterApplied, open_safetensors


def adapter_coefficients(plan: MergePlan, target: str) -> list[float]:
    """cᵢ for tensor `target`, so that the merge equals θ_base + Σᵢ cᵢΔᵢ."""
    params = tensor_parameters(plan, target)
    weights = params["weight"]
    total = sum(weights)
    if plan.spec.name == "linear":
        if not params["normalize"] and abs(total - 1) > 1e-6:
            raise PolmError(f"an unnormalized linear merge with weights summing to {total} (not 1) scales the base "
                            "itself, which an adapter cannot express", where="output_format",
                            fix="Use normalize: true, weights that sum to 1, or output_format: model.")
        if total == 0:
            raise PolmError(f"the linear weights for '{target}' sum to 0", where="parameters.weight")
        return [w / total for w in weights] if params["normalize"] else list(weights)
    divisor = total if params["normalize"] and abs(total) >= 1e-8 else 1.0
    return [params["scale"] * w / divisor for w in weights]


def check_adapter_plan(plan: MergePlan) -> None:
    """A full-model base and plain LoRA adapters as inputs (MergeConfig.validate has checked the method)."""
    if plan.base is not None and plan.base.kind == "adapter":
        raise PolmError("with output_format: adapter the base must be a full model, not an adapter", where="base",
                        fix="Set base: to the pretrained model the adapters were trained on.")
    for inp in plan.inputs:
        if not isinstance(inp.source, AdapterApplied):
            raise PolmError("is a full model; output_format: adapter merges LoRA adapters only", where=inp.label,
                            fix="Use output_format: model to merge full models.")
        kinds = {patch.kind for patch in inp.source.patches.values()}
        if "replace" in kinds or any("magnitude" in p.keys for p in inp.source.patches.values()):
            raise PolmError("has DoRA magnitudes or modules_to_save copies, which do not add up as LoRA", where=inp.label,
                            fix="Use output_format: model.")
    if len({inp.source.adapter_config.get("fan_in_fan_out", False) for inp in plan.inputs}) > 1:
        raise PolmError("the adapters disagree on fan_in_fan_out", where="models", fix="Use output_format: model.")


def combined_adapter(plan: MergePlan) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The stacked LoRA tensors (PEFT key names) and the rank of each module."""
    targets = sorted({t for inp in plan.inputs for t in inp.source.patches})
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for target in targets:
        coefficients = adapter_coefficients(plan, target)
        parts_a, parts_b, kind = [], [], "lora"
        for inp, c in zip(plan.inputs, coefficients):
            patch = inp.source.patches.get(target)
            if patch is None:
                continue
            with open_safetensors(inp.source.file, inp.label) as handle:
                parts_a.append(handle.get_tensor(patch.keys["A"]).float())
                parts_b.append(handle.get_tensor(patch.keys["B"]).float() * (c * patch.scaling))
            kind = patch.kind
        module = target.removesuffix(".weight")
        names = ("lora_A.weight", "lora_B.weight") if kind == "lora" else ("lora_embedding_A", "lora_embedding_B")
        tensors[f"base_model.model.{module}.{names[0]}"] = torch.cat(parts_a, dim=0)     # [Σr, in]
        tensors[f"base_model.model.{module}.{names[1]}"] = torch.cat(parts_b, dim=1)     # [out, Σr]
        ranks[module] = sum(a.shape[0] for a in parts_a)
    return tensors, ranks


def adapter_config(plan: MergePlan, ranks: dict[str, int]) -> dict[str, Any]:
    """The first input's adapter_config.json with rank and alpha per module (scaling α/r = 1)."""
    config = dict(plan.inputs[0].source.adapter_config)
    top = max(ranks.values())
    modules = sorted({m.rsplit(".", 1)[-1] for m in ranks})
    config.update(r=top, lora_alpha=top, rank_pattern=dict(ranks), alpha_pattern=dict(ranks), use_rslora=False,
                  use_dora=False, target_modules=modules, modules_to_save=None,
                  base_model_name_or_path=plan.cfg.base or config.get("base_model_name_or_path"))
    return config


def write_adapter(plan: MergePlan, out: Path) -> list[Path]:
    """adapter_model.safetensors + adapter_config.json (loads with peft.PeftModel.from_pretrained)."""
    from safetensors.torch import save_file

    check_adapter_plan(plan)
    tensors, ranks = combined_adapter(plan)
    if not tensors:
        raise PolmError("the adapters change no tensor", where="models")
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(adapter_config(plan, ranks), indent=2))
    return [out / "adapter_model.safetensors"]
