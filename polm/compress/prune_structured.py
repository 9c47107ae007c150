"""Structured pruning to a smaller dense model: depth by ShortGPT's Block Influence, width (MLP neurons,
attention query heads) by Minitron-style activation importance; the result saves and reloads with plain transformers.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from polm.compress.prune_layers import decoder_layers
from polm.errors import PolmError


def block_influence(h_in: torch.Tensor, h_out: torch.Tensor) -> tuple[float, int]:
    """(Σ_t cos(h_in,t, h_out,t), tokens) for hidden states [..., hidden]; BI = 1 − Σcos / tokens.

    ShortGPT (Men et al. 2024, arXiv:2403.03853): a layer that barely turns its input (cos ≈ 1) has BI ≈ 0
    and is the first to drop. Returned as a sum so batches can be accumulated.
    """
    cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
    return float(cos.sum()), cos.numel()


def layers_to_drop(bi: list[float], count: int) -> list[int]:
    """Indices of the `count` lowest-BI layers, ascending (ties: the earlier layer first)."""
    order = sorted(range(len(bi)), key=lambda i: (bi[i], i))
    return sorted(order[:count])


def drop_count(n_layers: int, layers: int, fraction: float) -> int:
    """How many layers to drop from `layers` (a count) or `fraction` (of n_layers, rounded); PolmError if too many."""
    if layers and fraction:
        raise PolmError("set depth.layers or depth.fraction, not both", where="depth")
    if not 0 <= fraction < 1:
        raise PolmError(f"depth.fraction must be in [0, 1), got {fraction}", where="depth.fraction")
    count = layers or round(fraction * n_layers)
    if not 0 <= count < n_layers:
        raise PolmError(f"cannot drop {count} of the model's {n_layers} decoder layers", where="depth.layers",
                        fix=f"Drop between 0 and {n_layers - 1} layers.")
    return count


@torch.no_grad()
def layer_block_influence(model: nn.Module, batches: list[torch.Tensor]) -> list[float]:
    """BI_i = 1 − E_tokens[cos(h_in, h_out)] of every decoder layer i over the calibration batches."""
    _, layers = decoder_layers(model)
    sums = [[0.0, 0] for _ in layers]

    def hook(i: int) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            cos, n = block_influence(h_in, out[0] if isinstance(out, tuple) else out)
            sums[i][0] += cos
            sums[i][1] += n
        return record

    _run_with_hooks(model, batches, [layer.register_forward_hook(hook(i), with_kwargs=True)
                                     for i, layer in enumerate(layers)])
    return [1 - cos / n for cos, n in sums]


def _run_with_hooks(model: nn.Module, batches: list[torch.Tensor], handles: list) -> None:
    device = next(model.parameters()).device
    try:
        for ids in batches:
            model(input_ids=ids.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()


def drop_layers(model: nn.Module, drop: list[int]) -> nn.Module:
    """A new model of the same class without decoder layers `drop` (config.num_hidden_layers shrinks)."""
    path, layers = decoder_layers(model)
    kept = [i for i in range(len(layers)) if i not in set(drop)]
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in kept]
    renumber = {old: new for new, old in enumerate(kept)}
    pattern = re.compile(rf"^{re.escape(path)}\.(\d+)\.")
    state = {}
    for key, value in model.state_dict().items():
        match = pattern.match(key)
        if match is None:
            state[key] = value
        elif int(match[1]) in renumber:
            state[f"{path}.{renumber[int(match[1])]}.{key[match.end():]}"] = value
    return _rebuild(model, config, state)


def _rebuild(model: nn.Module, config: Any, state: dict[str, torch.Tensor]) -> nn.Module:
    param = next(model.parameters())
    new = type(model)(config).to(device=param.device, dtype=param.dtype)
    new.load_state_dict(state, strict=True)
    return new.eval()


def top_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, in ascending index order (so the model's layout is kept)."""
    order = torch.sort(scores, descending=True, stable=True).indices   # ties: the earlier index first
    return torch.sort(order[:keep]).values


def heads_to_keep(scores: torch.Tensor, n_kv: int, keep_per_group: int) -> torch.Tensor:
    """Query heads kept: the `keep_per_group` most important of each KV group (query heads
    g·G .. g·G+G−1 share KV head g, G = n_heads / n_kv), so every group keeps the same number of
    query heads and all K/V heads stay; indices ascending."""
    group = len(scores) // n_kv
    kept = [g * group + top_indices(scores[g * group:(g + 1) * group], keep_per_group) for g in range(n_kv)]
    return torch.cat(kept)


@torch.no_grad()
def width_importance(model: nn.Module, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per decoder layer: MLP neuron importance [intermediate] and query-head importance [n_heads].

    Minitron (Muralidharan et al. 2024, arXiv:2407.14679): neuron j scores mean_t |a_tj| for the
    intermediate activation a = act(gate(x)) ⊙ up(x) (down_proj's input); head h scores mean_t ‖o_t,h‖₂,
    the norm of its attention output (o_proj's input, split into heads).
    """
    _, layers = decoder_layers(model)
    head_dim = llama_head_dim(model)
    mlp = [torch.zeros(layer.mlp.down_proj.in_features) for layer in layers]
    heads = [torch.zeros(layer.self_attn.o_proj.in_features // head_dim) for layer in layers]

    def neurons(i: int) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple) -> None:
            a = args[0].detach().float().reshape(-1, args[0].shape[-1])
            mlp[i] += a.abs().sum(0).cpu()
        return record

    def head_norms(i: int) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple) -> None:
            o = args[0].detach().float().reshape(-1, len(heads[i]), head_dim)
            heads[i] += o.norm(dim=-1).sum(0).cpu()
        return record

    handles = [h for i, layer in enumerate(layers) for h in (
        layer.mlp.down_proj.register_forward_pre_hook(neurons(i)),
        layer.self_attn.o_proj.register_forward_pre_hook(head_norms(i)))]
    _run_with_hooks(model, batches, handles)
    tokens = sum(ids.numel() for ids in batches)
    return [m / tokens for m in mlp], [h / tokens for h in heads]


def llama_head_dim(model: nn.Module) -> int:
    """The head dimension of a Llama-layout model (q/k/v/o_proj, gate/up/down_proj); PolmError otherwise."""
    _, layers = decoder_layers(model)
    names = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    found = {name for name, module in layers[0].named_modules() if isinstance(module, nn.Linear)}
    if not names <= found:
        raise PolmError(f"width pruning supports Llama-layout layers ({', '.join(sorted(names))}); "
                        f"{type(model).__name__} has {', '.join(sorted(found)) or 'no linear layers'}",
                        fix="Use depth pruning or unstructured pruning for this architecture.")
    config = model.config
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def width_keep_counts(config: Any, mlp_fraction: float, head_fraction: float) -> tuple[int, int]:
    """(MLP neurons kept, query heads kept per KV group) after removing those fractions (rounded down)."""
    for key, value in (("width.mlp_fraction", mlp_fraction), ("width.head_fraction", head_fraction)):
        if not 0 <= value < 1:
            raise PolmError(f"{key} must be in [0, 1), got {value}", where=key,
                            fix="It is the fraction removed; 0 keeps all, 0.5 half.")
    group = config.num_attention_heads // config.num_key_value_heads
    return (config.intermediate_size - int(mlp_fraction * config.intermediate_size),
            group - int(head_fraction * group))


@torch.no_grad()
def prune_width(model: nn.Module, mlp_scores: list[torch.Tensor], head_scores: list[torch.Tensor],
                mlp_keep: int, heads_per_group: int) -> nn.Module:
    """A new dense model keeping, in every layer, the `mlp_keep` most important MLP neurons (rows of gate/up,
    columns of down_proj) and the `heads_per_group` most important query heads of each KV group (rows of
    q_proj, columns of o_proj); intermediate_size and num_attention_heads shrink, head_dim is kept."""
    path, layers = decoder_layers(model)
    head_dim = llama_head_dim(model)
    config = copy.deepcopy(model.config)
    config.intermediate_size = mlp_keep
    config.num_attention_heads = config.num_key_value_heads * heads_per_group
    config.head_dim = head_dim
    state = dict(model.state_dict())
    for i in range(len(layers)):
        p = f"{path}.{i}"
        neurons = top_indices(mlp_scores[i], mlp_keep)
        for name in ("gate_proj", "up_proj"):
            _slice(state, f"{p}.mlp.{name}", neurons, dim=0)
        _slice(state, f"{p}.mlp.down_proj", neurons, dim=1)
        heads = heads_to_keep(head_scores[i], model.config.num_key_value_heads, heads_per_group)
        rows = (heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).reshape(-1)
        _slice(state, f"{p}.self_attn.q_proj", rows, dim=0)
        _slice(state, f"{p}.self_attn.o_proj", rows, dim=1)
    return _rebuild(model, config, state)


def _slice(state: dict[str, torch.Tensor], module: str, index: torch.Tensor, dim: int) -> None:
    """Keep `index` along `dim` of module.weight (and along its only dim of module.bias when dim is 0)."""
    state[f"{module}.weight"] = state[f"{module}.weight"].index_select(dim, index).contiguous()
    if dim == 0 and f"{module}.bias" in state:
        state[f"{module}.bias"] = state[f"{module}.bias"].index_select(0, index).contiguous()
