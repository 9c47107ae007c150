"""Weight-only round-to-nearest (RTN) quantization as pure tensor functions, and torchao's in-PyTorch path.

Codes are signed int8 in [-2^(b-1), 2^(b-1)-1]; a weight is rebuilt as w ≈ (q - zero) · scale per group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from polm.errors import PolmError, require
from polm.registry import Registry

BITS = (4, 8)
TORCHAO_VERSION = "0.18.0"       # the pin in pyproject's `compress` extra, checked against torch 2.13

# name -> quantizer of one weight; `needs_hessian`: it takes the calibration Hessian H = 2 X Xᵀ / N too.
QUANTIZERS = Registry("quantization method", defaults={"needs_hessian": False})


@dataclass
class QuantizedWeight:
    """A [out, in] weight as int8 codes `q`, per-group `scale` and integer `zero` (both [out, groups]).

    Column j belongs to group `g_idx[j]`: `j // group_size`, unless GPTQ's act-order permuted the
    columns before grouping them.
    """

    q: torch.Tensor              # [out, in] int8
    scale: torch.Tensor          # [out, groups] float32
    zero: torch.Tensor           # [out, groups] int8 (0 when symmetric)
    group_size: int
    bits: int
    symmetric: bool
    g_idx: torch.Tensor | None = None   # [in] int64; None means j // group_size

    def group_index(self) -> torch.Tensor:
        if self.g_idx is not None:
            return self.g_idx
        return torch.arange(self.q.shape[1], device=self.q.device) // self.group_size


def code_range(bits: int) -> tuple[int, int]:
    """(qmin, qmax) = (-2^(b-1), 2^(b-1) - 1): [-8, 7] for 4 bits, [-128, 127] for 8."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def check_scheme(in_features: int, bits: int, group_size: int | None, where: str = "") -> int:
    """The group size to use (`in_features` for None / -1: one group per output channel), after checks."""
    if bits not in BITS:
        raise PolmError(f"bits must be 4 or 8, got {bits}", where=where + "bits" if where else None,
                        fix="Use bits: 8 (per-channel int8) or bits: 4 (group-wise int4).")
    size = in_features if group_size in (None, -1) else int(group_size)
    if size <= 0 or in_features % size:
        raise PolmError(f"group size {group_size} does not divide in_features {in_features}",
                        where=where + "group_size" if where else None,
                        fix="Choose a divisor of every targeted layer's input width (e.g. 32, 64, 128), or -1.")
    return size


def group_params(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero of each row of `w` [rows, n] (one group per row).

    symmetric:  scale = max|w| / qmax,                 zero = 0
    asymmetric: scale = (max(w,0) - min(w,0)) / (2^b - 1), zero = qmin - round(min(w,0) / scale)
    The asymmetric range always holds 0 (as in GPTQ's reference), so 0 is exact and an all-positive
    row uses the codes from its zero point upwards. An all-zero group gets scale 1.
    """
    qmin, qmax = code_range(bits)
    if symmetric:
        scale = w.abs().amax(dim=1) / qmax
        zero = torch.zeros_like(scale)
    else:
        lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
        scale = (hi - lo) / (qmax - qmin)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = qmin - torch.round(lo / scale)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)   # all-zero group: any scale is exact
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """q = clamp(round(w / scale) + zero, qmin, qmax), with scale/zero broadcast against `w`."""
    qmin, qmax = code_range(bits)
    return torch.clamp(torch.round(w / scale) + zero, qmin, qmax)


@QUANTIZERS.register("rtn")
def quantize_rtn(w: torch.Tensor, bits: int = 8, group_size: int | None = None,
                 symmetric: bool = True) -> QuantizedWeight:
    """Round each weight of `w` [out, in] to the nearest code of its group (`group_size` columns; None: the row).

    Without clamping (the range covers the group) |w - dequantize(qw)| ≤ scale / 2 elementwise.
    """
    out_features, in_features = w.shape
    size = check_scheme(in_features, bits, group_size)
    groups = w.detach().float().reshape(out_features * in_features // size, size)
    scale, zero = group_params(groups, bits, symmetric)
    q = quantize_codes(groups, scale[:, None], zero[:, None], bits)
    n = in_features // size
    return QuantizedWeight(q.reshape(out_features, in_features).to(torch.int8), scale.reshape(out_features, n),
                           zero.reshape(out_features, n).to(torch.int8), size, bits, symmetric)


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w_hat[i, j] = (q[i, j] - zero[i, g(j)]) · scale[i, g(j)], shape [out, in]."""
    g = qw.group_index()
    return ((qw.q.float() - qw.zero.float()[:, g]) * qw.scale.float()[:, g]).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two signed 4-bit codes per byte: [out, in] int8 in [-8, 7] -> [out, in/2] uint8 (low nibble first)."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_int4`."""
    low, high = (packed & 0xF).to(torch.int16) - 8, (packed >> 4).to(torch.int16) - 8
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1).to(torch.int8)


def torchao_quantize(model: torch.nn.Module, bits: int = 8, group_size: int | None = None,
                     filter_fn: Callable[[torch.nn.Module, str], bool] | None = None) -> torch.nn.Module:
    """Quantize `model`'s Linear weights in place with torchao for quantized inference in PyTorch.

    8 bits: `Int8WeightOnlyConfig` (per-channel); 4 bits: `IntxWeightOnlyConfig(int4, PerGroup(group_size))`.
    """
    check_torchao(require("torchao", "compress", "torchao quantization"))
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    if bits not in BITS:
        check_scheme(1, bits, None)
    if bits == 8:
        config = Int8WeightOnlyConfig()
    else:
        granularity = PerAxis(0) if group_size in (None, -1) else PerGroup(int(group_size))
        config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=granularity)
    quantize_(model, config, filter_fn=filter_fn)
    return model


def check_torchao(torchao) -> None:
    """torchao 0.18 needs torch >= 2.11 (its kernels are built against it); refuse older pairs by name."""
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < (2, 11):
        raise PolmError(f"torchao {getattr(torchao, '__version__', '?')} does not support torch {torch.__version__}",
                        fix=f"Install torch >= 2.11 with torchao=={TORCHAO_VERSION}, or use method: rtn.")


def select_linears(model: torch.nn.Module, targets: list[str] | None = None,
                   exclude: list[str] | tuple[str, ...] = ("lm_head",)) -> dict[str, torch.nn.Linear]:
    """The nn.Linear modules to quantize, by name: those named in `targets` (a full module name or its
    last part, e.g. 'q_proj'; None: every Linear) minus those named in `exclude`."""
    def named(name: str, keys) -> bool:
        return any(name == k or name.endswith("." + k) for k in keys)

    modules = dict(model.named_modules())
    for key in targets or []:
        hits = [n for n in modules if n and named(n, [key])]
        if not hits:
            raise PolmError(f"no module is named '{key}'", where="targets",
                            fix="Name Linear modules such as q_proj, mlp.down_proj or model.layers.0.self_attn.o_proj.")
        wrong = [n for n in hits if not isinstance(modules[n], torch.nn.Linear)]
        if wrong:
            raise PolmError(f"'{key}' names a {type(modules[wrong[0]]).__name__} ('{wrong[0]}'), which cannot "
                            "be quantized", where="targets", fix="Only nn.Linear layers are supported.")
    return {n: m for n, m in modules.items() if isinstance(m, torch.nn.Linear)
            and (targets is None or named(n, targets)) and not named(n, exclude)}


def rtn_model(linears: dict[str, torch.nn.Linear], bits: int = 8, group_size: int | None = None,
              symmetric: bool = True) -> dict[str, QuantizedWeight]:
    """RTN every module of `linears` in place (weights become their dequantized values); the codes by name."""
    out = {}
    for name, module in linears.items():
        out[name] = quantize_rtn(module.weight, bits, group_size, symmetric)
        module.weight.data = dequantize(out[name], module.weight.dtype)
    return out
