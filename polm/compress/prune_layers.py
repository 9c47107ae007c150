"""Calibration for pruning: token windows from a data reference, each decoder layer's captured inputs, and the
layer-by-layer driver that prunes a layer's linears on the outputs of the already-pruned layers before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from polm.compress.prune import PRUNE_METHODS, LayerStats, Sparsity, check_prunable
from polm.errors import PolmError

LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, layers) of the model's stack of decoder layers; PolmError for an unknown architecture."""
    for path in LAYER_PATHS:
        node: Any = model
        for part in path.split("."):
            node = getattr(node, part, None)
        if isinstance(node, nn.ModuleList) and len(node):
            return path, node
    raise PolmError(f"cannot find the decoder layers of a {type(model).__name__}",
                    fix=f"Pruning supports causal LMs with layers at one of: {', '.join(LAYER_PATHS)}.")


def prunable_linears(layer: nn.Module, prefix: str) -> dict[str, nn.Linear]:
    """The nn.Linear modules of one decoder layer by full dotted name; any other leaf with a matrix weight
    (GPT-2's Conv1D, a quantized linear) is an unsupported layer type."""
    found = {}
    for name, module in layer.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear):
            found[f"{prefix}.{name}"] = module
        elif not list(module.children()) and isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            raise PolmError(f"layer '{prefix}.{name}' is a {type(module).__name__}, which pruning does not support",
                            fix="Prune a model built from torch.nn.Linear layers (Llama, Qwen2, Mistral, ...); "
                                "dequantize a quantized model first.")
    return found


def check_model(model: nn.Module, sparsity: Sparsity) -> None:
    """Everything that can be wrong with (model, pattern), raised before any weight changes."""
    path, layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        for name, linear in prunable_linears(layer, f"{path}.{i}").items():
            check_prunable(tuple(linear.weight.shape), sparsity, name)


class _Captured(Exception):
    """Stops the model forward once the first decoder layer's inputs are captured."""


@dataclass
class LayerInputs:
    """One calibration batch as the next decoder layer sees it: hidden states and the layer's other kwargs."""

    hidden: torch.Tensor
    kwargs: dict[str, Any] = field(default_factory=dict)


def first_layer_inputs(model: nn.Module, batches: list[torch.Tensor]) -> list[LayerInputs]:
    """Run the embedding (and whatever precedes layer 0) on each batch and keep what layer 0 receives."""
    _, layers = decoder_layers(model)
    captured: list[LayerInputs] = []

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if len(args) > 1:
            raise PolmError(f"{type(module).__name__} takes its arguments positionally, which pruning does not "
                            "support", fix="Use a transformers causal LM whose layers take keyword arguments.")
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append(LayerInputs(hidden, kwargs))
        raise _Captured

    device = next(model.parameters()).device
    handle = layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for ids in batches:
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


def run_layer(layer: nn.Module, inputs: list[LayerInputs]) -> list[LayerInputs]:
    """The layer's outputs on each batch, as the next layer's inputs."""
    out = []
    for item in inputs:
        result = layer(item.hidden, **item.kwargs)
        out.append(LayerInputs(result[0] if isinstance(result, tuple) else result, item.kwargs))
    return out


def collect_stats(layer: nn.Module, linears: dict[str, nn.Linear], inputs: list[LayerInputs],
                  needs: str | None) -> dict[str, LayerStats]:
    """Statistics of each linear's input over every calibration batch, gathered with forward pre-hooks."""
    stats = {name: LayerStats() for name in linears}
    if needs is None:
        return stats
    handles = [lin.register_forward_pre_hook(_accumulate(stats[name], needs)) for name, lin in linears.items()]
    try:
        run_layer(layer, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _accumulate(stats: LayerStats, needs: str) -> Callable[[nn.Module, tuple], None]:
    def hook(module: nn.Module, args: tuple) -> None:
        stats.add(args[0].detach(), needs)
    return hook


@torch.no_grad()
def prune_layerwise(model: nn.Module, batches: list[torch.Tensor] | None, method: str, sparsity: Sparsity,
                    options: dict[str, Any] | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """Prune every linear of every decoder layer with `method` in place; returns the keep-masks by parameter name.

    Layer i's statistics come from its inputs computed by layers 0..i-1 *after* they were pruned, so
    each layer compensates for the error of those before it (SparseGPT, Wanda). A method that needs no
    statistics (magnitude) reads no data and `batches` may be None.
    """
    check_model(model, sparsity)
    fn, needs = PRUNE_METHODS.get(method), PRUNE_METHODS.meta(method)["needs"]
    path, layers = decoder_layers(model)
    inputs = first_layer_inputs(model, batches) if needs else []
    masks: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        linears = prunable_linears(layer, f"{path}.{i}")
        stats = collect_stats(layer, linears, inputs, needs)
        for name, linear in linears.items():
            pruned, mask = fn(linear.weight.data, stats[name], sparsity, **(options or {}))
            linear.weight.data.copy_(pruned)
            masks[f"{name}.weight"] = mask.cpu()
        if needs:
            inputs = run_layer(layer, inputs)
        if progress:
            progress(i + 1, len(layers))
    return masks


def iter_layer_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """(full parameter-owner name, linear) for every linear of every decoder layer, in order."""
    path, layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        yield from prunable_linears(layer, f"{path}.{i}").items()
