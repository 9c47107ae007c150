"""The merge plan: the opened inputs, the method and its settings, and the tensors to write, as
`build_plan` (polm.merge.runner) makes it; and the method's keyword arguments for one tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polm.merge.config import MergeConfig
from polm.merge.methods import MethodSpec
from polm.merge.params import layer_position, resolve_setting
from polm.merge.sources import TensorMeta, TensorSource


@dataclass
class Input:
    ref: str
    label: str                      # e.g. "models[1] 'runs/sft-wiki/final'", used in every message
    path: Path
    kind: str                       # "model" | "adapter"
    source: TensorSource
    parameters: dict[str, Any]
    model_dir: Path                 # where config.json lives (the adapter's base for adapters)


@dataclass
class MergePlan:
    cfg: MergeConfig
    spec: MethodSpec
    fn: Callable[..., torch.Tensor]
    base: Input | None
    inputs: list[Input]
    tensors: list[tuple[str, TensorMeta]]    # output names, shapes, dtypes, in write order
    num_layers: int
    output: Path
    tokenizer_dir: Path


# --- per-tensor parameters -----------------------------------------------------------------------

def _typed(value: Any, default: Any) -> Any:
    return float(value) if isinstance(default, float) and not isinstance(value, bool) else value


def _resolve(chain: list[dict[str, Any]], key: str, name: str, x: float, default: Any) -> Any:
    for settings in chain:
        if key in settings:
            value = resolve_setting(settings[key], name, x)
            if value is not None:
                return _typed(value, default)
    return default


def tensor_parameters(plan: MergePlan, name: str) -> dict[str, Any]:
    """Keyword arguments for the method on tensor `name`: per-input lists and shared scalars.

    Per-model settings win over top-level ones, which win over the method's defaults.
    """
    x = layer_position(name, plan.num_layers)
    shared = plan.cfg.shared_settings()
    kwargs = {key: [_resolve([inp.parameters, shared], key, name, x, default) for inp in plan.inputs]
              for key, default in plan.spec.per_input.items()}
    kwargs.update({key: _resolve([shared], key, name, x, default) for key, default in plan.spec.shared.items()})
    return kwargs
