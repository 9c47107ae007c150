"""GPTQ (Frantar et al., 2022, arXiv:2210.17323): quantize a weight column by column, folding each
column's rounding error into the not-yet-quantized columns through the inverse Hessian of its inputs.

    H = 2/N Σ_n X_n X_nᵀ                   (X_n [in, tokens] the layer's inputs on calibration sequence n)
    U = chol(( H + λ I )⁻¹)ᵀ (upper),  λ = percdamp · mean(diag H)
    for column j:  q_j = Q(w_j),  e_j = (w_j - q_j) / U_jj,  w_{j:} -= e_j U_{j, j:}

Columns are processed in blocks of `block_size` with the updates to later blocks applied lazily
(one matmul per block); the result does not depend on the block size. Group scales are chosen when
a group starts, from the weights as updated by every earlier column (the reference's rule).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from polm.compress.hessian import inverse_hessian_cholesky
from polm.compress.prune_layers import decoder_layers, first_layer_inputs, run_layer
from polm.compress.quantize import (
    QUANTIZERS,
    QuantizedWeight,
    check_scheme,
    dequantize,
    group_params,
    quantize_codes,
)
from polm.errors import PolmError


class HessianAccumulator:
    """Running H = 2/N Σ_n X_n X_nᵀ over N calibration sequences (a batch [B, T, in] adds B sequences)."""

    def __init__(self, in_features: int, device: torch.device | str = "cpu"):
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.sequences = 0

    def add(self, x: torch.Tensor) -> None:
        batch = x.shape[0] if x.dim() > 2 else 1
        x = x.detach().reshape(-1, x.shape[-1])
        x = x.float() if x.dtype != torch.float64 else x
        total = self.sequences + batch
        # the batch's XᵀX in the input's precision (at least float32), the running mean in float64
        self.hessian.mul_(self.sequences / total).add_((x.T @ x).to(torch.float64), alpha=2.0 / total)
        self.sequences = total


@QUANTIZERS.register("gptq", needs_hessian=True)
def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                  symmetric: bool = True, block_size: int = 128, percdamp: float = 0.01,
                  act_order: bool = False) -> QuantizedWeight:
    """GPTQ codes of `w` [out, in] given the Hessian [in, in] of its inputs (see the module docstring).

    `act_order` quantizes columns in order of decreasing diag(H) (groups are then formed in that
    order, recorded in `g_idx`). Inputs that never fired (diag H = 0) get weight 0. Computes in
    float32, or float64 for a float64 `w`.
    """
    out_features, in_features = w.shape
    size = check_scheme(in_features, bits, group_size)
    dtype = torch.promote_types(w.dtype, torch.float32)
    weight, h = w.detach().to(dtype).clone(), hessian.detach().to(dtype).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    weight[:, dead] = 0
    perm = torch.argsort(torch.diag(h), descending=True, stable=True) if act_order else torch.arange(in_features)
    weight, h = weight[:, perm], h[perm][:, perm]
    u = inverse_hessian_cholesky(h, percdamp)
    codes = torch.zeros_like(weight)
    scale = torch.zeros(out_features, in_features // size, dtype=dtype)
    zero = torch.zeros_like(scale)
    for start in range(0, in_features, block_size):
        end = min(start + block_size, in_features)
        block, errors = weight[:, start:end].clone(), torch.zeros(out_features, end - start, dtype=dtype)
        u_block = u[start:end, start:end]
        for i in range(end - start):
            col, g = start + i, (start + i) // size
            if col % size == 0:
                current = _current_group(weight, block, errors, u, start, i, size)
                scale[:, g], zero[:, g] = group_params(current, bits, symmetric)
            codes[:, col] = quantize_codes(block[:, i], scale[:, g], zero[:, g], bits)
            errors[:, i] = (block[:, i] - (codes[:, col] - zero[:, g]) * scale[:, g]) / u_block[i, i]
            block[:, i:] -= errors[:, i, None] * u_block[i, None, i:]
        weight[:, end:] -= errors @ u[start:end, end:]   # the lazy batch update of all later columns
    inverse = torch.argsort(perm)
    g_idx = (torch.arange(in_features) // size)[inverse] if act_order else None
    return QuantizedWeight(codes[:, inverse].to(torch.int8), scale.float(), zero.to(torch.int8), size, bits,
                           symmetric, g_idx)


def _current_group(weight: torch.Tensor, block: torch.Tensor, errors: torch.Tensor, u: torch.Tensor,
                   start: int, i: int, size: int) -> torch.Tensor:
    """Columns start+i .. start+i+size as updated by every earlier column: the in-block part from
    `block`; a part past the block end still lacks this block's lazy update, so it is applied here."""
    end, stop = start + block.shape[1], start + i + size
    inside = block[:, i:i + size]
    if stop <= end:
        return inside
    outside = weight[:, end:stop] - errors[:, :i] @ u[start:start + i, end:stop]
    return torch.cat([inside, outside], dim=1)


class _StageDone(Exception):
    """Raised by the last hook of a stage: the rest of the forward pass is not needed."""


def calibrate(model: nn.Module, modules: dict[str, nn.Linear], batches: Iterable[torch.Tensor]) -> dict[str, HessianAccumulator]:
    """The input Hessian of each module in `modules`, from forward hooks over the calibration batches."""
    acc = {name: HessianAccumulator(m.in_features, m.weight.device) for name, m in modules.items()}
    seen: set[str] = set()

    def hook(name: str):
        def record(_module, inputs, _output):
            acc[name].add(inputs[0])
            seen.add(name)
            if len(seen) == len(modules):
                raise _StageDone
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                seen.clear()
                try:
                    model(input_ids=batch.to(next(model.parameters()).device))
                except _StageDone:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return acc


def stages(names: Sequence[str]) -> list[list[str]]:
    """Linears grouped by transformer block ('model.layers.3.self_attn.q_proj' -> 'model.layers.3'),
    in model order; a linear outside any numbered block is its own stage."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        cut = next((k for k, p in enumerate(parts[:-1]) if p.isdigit()), None)
        groups.setdefault(".".join(parts[:cut + 1]) if cut is not None else name, []).append(name)
    return list(groups.values())


def gptq_model(model: nn.Module, batches: Sequence[torch.Tensor], linears: dict[str, nn.Linear], *,
               bits: int = 4, group_size: int | None = 128, symmetric: bool = True, block_size: int = 128,
               percdamp: float = 0.01, act_order: bool = False) -> dict[str, QuantizedWeight]:
    """GPTQ every module of `linears` in place, block by block: each block is calibrated on the outputs
    of the blocks before it as already quantized. Weights become their dequantized values; returns the
    codes by module name.

    The linears of the decoder layers are done with the pruning driver's layer-by-layer pass (layer i's
    inputs are layer i-1's outputs, computed once: one pass through the model in all); any other targeted
    linear (e.g. an lm_head) is calibrated afterwards with a full forward pass."""
    settings = dict(bits=bits, group_size=group_size, symmetric=symmetric, block_size=block_size,
                    percdamp=percdamp, act_order=act_order)
    path, layers = decoder_layers(model)
    per_layer = [{n: m for n, m in linears.items() if n.startswith(f"{path}.{i}.")} for i in range(len(layers))]
    inside = {n for group in per_layer for n in group}
    out: dict[str, QuantizedWeight] = {}
    last = max((i for i, group in enumerate(per_layer) if group), default=-1)
    if last >= 0:
        with torch.no_grad():
            inputs = first_layer_inputs(model, list(batches))
            for i, layer in enumerate(layers[:last + 1]):
                if per_layer[i]:
                    hessians = _layer_hessians(layer, per_layer[i], inputs)
                    out.update(_quantize_stage(per_layer[i], hessians, settings))
                if i < last:
                    inputs = run_layer(layer, inputs)
    for stage in stages([n for n in linears if n not in inside]):
        modules = {name: linears[name] for name in stage}
        out.update(_quantize_stage(modules, calibrate(model, modules, batches), settings))
    return out


def _layer_hessians(layer: nn.Module, modules: dict[str, nn.Linear], inputs: list) -> dict[str, HessianAccumulator]:
    """The input Hessian of each of one decoder layer's `modules`, from running the layer on its captured inputs."""
    acc = {name: HessianAccumulator(m.in_features, m.weight.device) for name, m in modules.items()}
    handles = [m.register_forward_hook(lambda _m, args, _o, name=name: acc[name].add(args[0]))
               for name, m in modules.items()]
    try:
        run_layer(layer, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return acc


def _quantize_stage(modules: dict[str, nn.Linear], hessians: dict[str, HessianAccumulator],
                    settings: dict) -> dict[str, QuantizedWeight]:
    out = {}
    for name, module in modules.items():
        if hessians[name].sequences == 0:
            raise PolmError(f"layer '{name}' saw no calibration input", where="targets",
                            fix="Target only layers the forward pass uses.")
        s = settings
        qw = gptq_quantize(module.weight, hessians[name].hessian, s["bits"], s["group_size"], s["symmetric"],
                           s["block_size"], s["percdamp"], s["act_order"])
        module.weight.data = dequantize(qw, module.weight.dtype)
        out[name] = qw
    return out
