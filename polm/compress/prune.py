"""Unstructured and N:M pruning as pure functions of a weight and its calibration statistics.

Scores (magnitude, Wanda), the mask they select (per row, per layer or N:M) and SparseGPT's OBS
update are registered in PRUNE_METHODS; `apply_masks` / `keep_masked` hold a pruned model's zeros.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from polm.compress.hessian import inverse_hessian_cholesky
from polm.errors import PolmError
from polm.registry import Registry

# needs: which calibration statistic of a layer's input X [tokens, in] a method reads
#   (None: none, "sq_norm": Σ_t x_tj² per input, "hessian": Σ_t x_t x_tᵀ [in, in]); paper: its citation.
PRUNE_METHODS = Registry("pruning method", defaults={"needs": None, "paper": None})


@dataclass(frozen=True)
class Sparsity:
    """What to zero: `fraction` of each comparison group (`scope` row or layer), or N:M (`n` kept per `m`)."""

    fraction: float = 0.5
    scope: Literal["row", "layer"] = "row"
    n: int = 0                      # N:M: keep n of every m consecutive inputs (0: unstructured)
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def target(self) -> float:
        """The fraction of zeros this pattern gives."""
        return 1 - self.n / self.m if self.is_nm else self.fraction


def parse_pattern(pattern: str, fraction: float, scope: str = "row", *, where: str = "pattern") -> Sparsity:
    """'unstructured' or 'N:M' (e.g. '2:4') with the unstructured `fraction` in [0, 1) -> a Sparsity."""
    if pattern == "unstructured":
        if not isinstance(fraction, int | float) or not 0 <= fraction < 1:
            raise PolmError(f"sparsity must be in [0, 1), got {fraction!r}", where="sparsity",
                            fix="sparsity is the fraction of weights set to zero, e.g. 0.5.")
        if scope not in ("row", "layer"):
            raise PolmError(f"scope must be 'row' or 'layer', got {scope!r}", where="scope")
        return Sparsity(float(fraction), scope)  # type: ignore[arg-type]
    match = re.fullmatch(r"(\d+):(\d+)", str(pattern))
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise PolmError(f"pattern must be 'unstructured' or 'N:M' with 0 < N < M, got {pattern!r}", where=where,
                        fix="N:M keeps N of every M consecutive input weights, e.g. 2:4 or 4:8.")
    return Sparsity(1 - int(match[1]) / int(match[2]), "row", int(match[1]), int(match[2]))


def check_prunable(weight_shape: tuple[int, ...], sparsity: Sparsity, name: str) -> None:
    """PolmError when an N:M pattern does not tile the input dimension of `name`'s weight [out, in]."""
    if sparsity.is_nm and weight_shape[-1] % sparsity.m:
        raise PolmError(f"{sparsity.n}:{sparsity.m} pruning needs the input dimension to be a multiple of "
                        f"{sparsity.m}, but '{name}' has {weight_shape[-1]} inputs", where="pattern",
                        fix="Use an unstructured pattern, or an M that divides every layer's input size.")


def keep_mask(score: torch.Tensor, sparsity: Sparsity) -> torch.Tensor:
    """Boolean keep-mask [out, in] from a score [out, in] (higher = more important).

    Unstructured: the ⌊s·in⌋ lowest of each row (scope row) or ⌊s·out·in⌋ lowest of the matrix (scope
    layer) are dropped. N:M: the n highest of every m consecutive inputs of a row are kept.
    Ties break by position (stable sort), so the count is exact.
    """
    if sparsity.is_nm:
        return _nm_mask(score, sparsity.n, sparsity.m)
    flat = score.reshape(1, -1) if sparsity.scope == "layer" else score
    drop = int(sparsity.fraction * flat.shape[1])
    mask = torch.ones_like(flat, dtype=torch.bool)
    if drop:
        order = torch.sort(flat, dim=1, stable=True).indices[:, :drop]
        mask.scatter_(1, order, False)
    return mask.reshape(score.shape)


def _nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    groups = score.reshape(score.shape[0], -1, m)                       # [out, in/m, m]
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return mask.reshape(score.shape)


@dataclass
class LayerStats:
    """Calibration statistics of one linear layer's input X [tokens, in], summed over `tokens` rows."""

    tokens: int = 0
    sq_norm: torch.Tensor | None = None   # [in]      Σ_t x_tj²  (‖X_j‖₂² of Wanda)
    hessian: torch.Tensor | None = None   # [in, in]  Σ_t x_t x_tᵀ (X Xᵀ of SparseGPT, X as [in, tokens])

    def add(self, x: torch.Tensor, needs: str | None) -> None:
        """Accumulate a batch of inputs x [..., in] (kept in float32)."""
        x = x.reshape(-1, x.shape[-1]).float()
        self.tokens += x.shape[0]
        if needs == "sq_norm":
            self.sq_norm = _plus(self.sq_norm, (x * x).sum(0))
        elif needs == "hessian":
            self.hessian = _plus(self.hessian, x.T @ x)


def _plus(total: torch.Tensor | None, part: torch.Tensor) -> torch.Tensor:
    return part if total is None else total + part


PruneFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@PRUNE_METHODS.register("magnitude", paper="Han et al. 2015, Learning both Weights and Connections")
def magnitude_prune(weight: torch.Tensor, stats: LayerStats, sparsity: Sparsity) -> tuple[torch.Tensor, torch.Tensor]:
    """Score |W_ij|; returns (W ⊙ mask, mask) for W [out, in]. No calibration data needed."""
    mask = keep_mask(weight.abs().float(), sparsity)
    return weight * mask, mask


@PRUNE_METHODS.register("wanda", needs="sq_norm", paper="Sun et al. 2024, A Simple and Effective Pruning Approach "
                        "for Large Language Models (arXiv:2306.11695)")
def wanda_prune(weight: torch.Tensor, stats: LayerStats, sparsity: Sparsity) -> tuple[torch.Tensor, torch.Tensor]:
    """Score S_ij = |W_ij| · ‖X_j‖₂ (‖X_j‖₂ = √Σ_t x_tj² over calibration tokens), compared within each
    output row (scope row, Wanda's group) or the whole matrix; kept weights are not updated."""
    score = weight.abs().float() * stats.sq_norm.sqrt().unsqueeze(0)
    mask = keep_mask(score, sparsity)
    return weight * mask, mask


@PRUNE_METHODS.register("sparsegpt", needs="hessian", paper="Frantar & Alistarh 2023, SparseGPT: Massive Language "
                        "Models Can Be Accurately Pruned in One-Shot (arXiv:2301.00774)")
def sparsegpt_prune(weight: torch.Tensor, stats: LayerStats, sparsity: Sparsity, *, block_size: int = 128,
                    damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """OBS pruning with the layer Hessian H = X Xᵀ + λI (λ = damp · mean diag H), columns left to right.

    U is the upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU); U_jj² = [(H_{j:,j:})⁻¹]_00, the inverse Hessian of
    the columns not yet fixed. Per block of `block_size` columns (N:M: per group of m) the mask drops the
    lowest w_ij² / U_jj²; then column by column the pruned error e_i = (w_i − q_i) / U_ii is spread over
    the remaining columns, W_{:, i:} −= e_i U_{i, i:}, so the kept weights absorb what was removed.
    Returns (Ŵ, mask) for W [out, in]. Inputs that never fire (H_jj = 0) are pruned first.
    """
    w = weight.detach().float().clone()
    h = stats.hessian.clone().float()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    u = inverse_hessian_cholesky(h, damp)
    mask = torch.ones_like(w, dtype=torch.bool)
    step = sparsity.m if sparsity.is_nm else block_size
    for start in range(0, w.shape[1], step):
        end = min(start + step, w.shape[1])
        block_u = u[start:end, start:end]
        block_mask = keep_mask(w[:, start:end] ** 2 / torch.diagonal(block_u).unsqueeze(0) ** 2, sparsity)
        mask[:, start:end] = block_mask
        err = _obs_block(w, block_u, block_mask, start)
        w[:, end:] -= err @ u[start:end, end:]
    return w.to(weight.dtype), mask


def _obs_block(w: torch.Tensor, u: torch.Tensor, keep: torch.Tensor, start: int) -> torch.Tensor:
    """Prune one block of columns of `w` in place, column by column; returns the scaled errors [out, block]."""
    err = torch.zeros_like(keep, dtype=w.dtype)
    for i in range(keep.shape[1]):
        col = w[:, start + i].clone()
        q = col * keep[:, i]
        err[:, i] = (col - q) / u[i, i]
        w[:, start + i:start + keep.shape[1]] -= err[:, i:i + 1] @ u[i:i + 1, i:]
        w[:, start + i] = q
    return err


def reconstruction_error(x: torch.Tensor, weight: torch.Tensor, pruned: torch.Tensor) -> float:
    """‖X Wᵀ − X Ŵᵀ‖_F for inputs x [tokens, in] and weights [out, in]."""
    return float(torch.linalg.matrix_norm(x @ (weight - pruned).T))


def apply_masks(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every parameter named in `masks` (name -> bool keep-mask of its shape) where the mask is False."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise PolmError(f"mask '{name}' names no parameter of the model",
                            fix="Use the masks.safetensors written with this pruned model.")
        with torch.no_grad():
            params[name].mul_(mask.to(params[name].device, params[name].dtype))


def keep_masked(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> list[torch.utils.hooks.RemovableHandle]:
    """Apply `masks`, then mask every gradient of those parameters so pruned weights stay exactly zero through
    optimizer steps (SGD with momentum and weight decay, Adam, AdamW: a zero weight with zero gradient and
    zero state does not move). Returns the hook handles (`.remove()` to fine-tune densely again)."""
    apply_masks(model, masks)
    params = dict(model.named_parameters())
    handles = []
    for name, mask in masks.items():
        keep = mask.to(params[name].device, params[name].dtype)
        handles.append(params[name].register_hook(lambda grad, keep=keep: grad * keep))
    return handles


def sparsity_of(tensor: torch.Tensor) -> float:
    """Fraction of exact zeros."""
    return float((tensor == 0).sum()) / tensor.numel()
