"""Merge parameters that vary by tensor: name filters and gradients over the layer stack.

A setting is written in YAML (mergekit's syntax) as
  - a scalar: `density: 0.5`
  - a gradient over layers: `t: [0, 0.5, 1]` — anchors spread evenly over the layers, linearly
    interpolated at the layer's position x = layer / (num_layers − 1) ∈ [0, 1]; tensors outside the
    layer stack (embeddings, final norm, lm_head) sit at x = 0
  - conditionals: `weight: [{filter: self_attn, value: 0.3}, {filter: mlp, value: [0.2, 0.8]}, {value: 0.5}]`
    — the first entry whose `filter` is a substring of the tensor name (or is absent / "*") wins.
"""

from __future__ import annotations

import re
from typing import Any

from polm.errors import PolmError

Setting = Any   # bool | int | float | str | list[number] | dict | list[dict] (validated by `check_setting`)

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def layer_index(tensor_name: str) -> int | None:
    """The transformer block a tensor belongs to (`model.layers.7.mlp.up_proj.weight` -> 7), else None."""
    match = _LAYER.search(tensor_name)
    return int(match.group(1)) if match else None


def layer_position(tensor_name: str, num_layers: int) -> float:
    """x = layer / (num_layers − 1) for block tensors (1 for a one-layer model), 0 outside the blocks."""
    index = layer_index(tensor_name)
    if index is None:
        return 0.0
    return index / (num_layers - 1) if num_layers > 1 else 1.0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interpolate(anchors: list[Any], x: float) -> Any:
    """Piecewise-linear value of evenly spaced `anchors` at x ∈ [0, 1]; non-numbers pick the nearest-below."""
    if not all(_is_number(a) for a in anchors):
        return anchors[int(x * (len(anchors) - 1))]
    scaled = x * (len(anchors) - 1)
    i0 = int(scaled)
    i1 = min(len(anchors) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * anchors[i0] + frac * anchors[i1]


def resolve_setting(setting: Setting, tensor_name: str, x: float) -> Any:
    """The value of `setting` for `tensor_name` at layer position x, or None if no conditional matches."""
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list):
        return setting
    if not setting:
        return None
    if not isinstance(setting[0], dict):
        return _interpolate(setting, x)
    for cond in setting:
        pattern = cond.get("filter")
        if pattern is None or pattern == "*" or pattern in tensor_name:
            return resolve_setting(cond["value"], tensor_name, x)
    return None


def check_setting(setting: Setting, where: str) -> list[tuple[Any, str]]:
    """Validate the shape of a setting; return every value it can take at an anchor, with its key path.

    Interpolation stays between neighbouring anchors, so range checks on these values cover all tensors.
    """
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return [(setting, where)]
    if not isinstance(setting, list) or not setting:
        raise PolmError(f"expected a number, a list of numbers (a layer gradient) or a list of "
                        f"{{filter, value}} entries, got {setting!r}", where=where)
    if all(isinstance(c, dict) for c in setting):
        values: list[tuple[Any, str]] = []
        for i, cond in enumerate(setting):
            unknown = set(cond) - {"filter", "value"}
            if unknown or "value" not in cond:
                raise PolmError(f"a conditional entry needs 'value' (and optionally 'filter'), got keys {sorted(cond)}",
                                where=f"{where}[{i}]", fix="Write e.g. {filter: self_attn, value: 0.5}.")
            if cond.get("filter") is not None and not isinstance(cond["filter"], str):
                raise PolmError(f"filter must be a string, got {cond['filter']!r}", where=f"{where}[{i}].filter")
            values += check_setting(cond["value"], f"{where}[{i}].value")
        return values
    if any(isinstance(c, (dict, list)) for c in setting):
        raise PolmError("a list setting must hold only numbers (a layer gradient) or only {filter, value} entries",
                        where=where)
    return [(value, f"{where}[{i}]") for i, value in enumerate(setting)]
