"""Merge methods: pure per-tensor functions registered by name in `MERGE_METHODS`.

A method receives every input tensor that one output tensor is made from (plus plain scalars) and
returns the merged tensor; the streaming runner calls it once per tensor name. Only torch is imported.

Calling convention (what `MethodSpec`, the registry metadata, records for the runner):
    fn(base, tensors, <per-input lists>, <shared scalars>, generator=None) -> Tensor
`base` is the base model's tensor (None for methods that do not use one), `tensors` the other inputs,
each of the same shape; per-input parameters (`weight`, `density`) are lists aligned with `tensors`.
Arithmetic runs in float32 (float64 when the inputs are float64); the caller casts the result.
Semantics and defaults follow mergekit (github.com/arcee-ai/mergekit, v0.1.5) so configs carry over.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from polm.registry import Registry, option_names

MERGE_METHODS = Registry("merge method", declare_with="polm.merge.methods.merge_method")

Tensor = torch.Tensor


@dataclass(frozen=True)
class MethodSpec:
    """What the runner must know about a method to call it: its registry metadata."""

    name: str
    uses_base: bool                   # needs the base tensor (task vectors are θᵢ − θ_base)
    per_input: dict[str, Any]         # parameter -> default, one value per non-base input
    shared: dict[str, Any]            # parameter -> default, one value per output tensor
    max_inputs: int | None = None     # non-base inputs allowed (slerp: exactly 1)
    random: bool = False              # takes a torch.Generator (DARE)
    paper: str = ""                   # reference shown in the model card

    @property
    def parameters(self) -> list[str]:
        return sorted([*self.per_input, *self.shared])


def merge_method(name: str, *, uses_base: bool, per_input: dict[str, Any] | None = None,
                 max_inputs: int | None = None, paper: str = "") -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register `fn` under `name`; its keyword defaults (other than per-input ones) are the shared parameters.

    A plug-in decorates its own function the same way and is named in a config as 'pkg.module:fn'.
    """
    per_input = dict(per_input or {})

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        params = inspect.signature(fn).parameters
        settable = option_names(fn, skip=2, exclude=("generator",))
        if settable is None:
            raise ValueError(f"merge method '{name}' must name its parameters (no **kwargs)")
        shared = {k: params[k].default for k in settable
                  if k not in per_input and params[k].default is not inspect.Parameter.empty}
        unset = [k for k in settable if k not in per_input and k not in shared]
        if unset:
            raise ValueError(f"merge method '{name}': parameter '{unset[0]}' is neither per-input nor has a default")
        return MERGE_METHODS.register(name, uses_base=uses_base, per_input=per_input, shared=shared,
                                      max_inputs=max_inputs, random="generator" in params, paper=paper)(fn)

    return register


def method_spec(method: str) -> MethodSpec:
    """The MethodSpec of a registered method name or a decorated 'pkg.module:fn' plug-in."""
    entry = MERGE_METHODS.entry(method)
    return MethodSpec(entry.name, **entry.meta)


def _work_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# --- sparsification: which entries of a task vector survive (in place, on rows the method owns) ---

def magnitude_trim_(delta: Tensor, density: float) -> Tensor:
    """In place: keep the k = max(1, ⌊density·n⌋) entries of largest |δ|, zero the rest (TIES "trim").

    Exactly k survive: among entries tied with the k-th largest magnitude the lowest positions win
    (mergekit leaves that choice to torch's unstable argsort, so on tied weights, common in
    dequantized checkpoints, the two tools may keep different ones of the tied entries).
    density ≥ 1 leaves δ unchanged. On CPU the threshold comes from numpy's in-place partition
    of one |δ| copy: the scratch is one tensor, not the int64 indices of an argsort.
    """
    if density >= 1:
        return delta
    magnitude = delta.abs().reshape(-1)
    k = max(1, int(density * magnitude.numel()))
    threshold = _kth_largest(magnitude, k)
    magnitude = delta.abs().reshape(-1)                                # the partition reordered the copy
    keep = magnitude > threshold
    missing = k - int(keep.sum())
    if missing > 0 and threshold > 0:                                  # tied zeros change nothing
        keep[(magnitude == threshold).nonzero().reshape(-1)[:missing]] = True
    del magnitude
    return delta.mul_(keep.reshape(delta.shape))


def _kth_largest(values: Tensor, k: int) -> float:
    """The k-th largest entry of a 1-d tensor, which may be reordered."""
    if values.device.type == "cpu":
        array = values.numpy()
        array.partition(values.numel() - k)
        return float(array[values.numel() - k])
    return float(values.kthvalue(values.numel() - k + 1).values)


def random_drop_(delta: Tensor, density: float, rescale: str = "inverse",
                 generator: torch.Generator | None = None) -> Tensor:
    """In place DARE drop: keep each entry with probability p = density (Bernoulli mask m), then rescale.

    rescale='inverse': m⊙δ / p, so E[result] = δ (Yu et al., 2023, arXiv:2311.03099);
    'l1': m⊙δ · ‖δ‖₁ / ‖m⊙δ‖₁ (mergekit's `rescale: true`); 'none': m⊙δ.
    The mask is torch.bernoulli(full(δ.shape, p)): the same random stream mergekit draws.
    """
    if rescale not in ("inverse", "l1", "none"):
        raise ValueError(f"unknown DARE rescale '{rescale}' (inverse, l1 or none)")
    if density >= 1:
        return delta
    mask = torch.full(delta.shape, density, dtype=torch.float32, device=delta.device)
    torch.bernoulli(mask, generator=generator, out=mask)
    before = delta.abs().sum() if rescale == "l1" else None
    delta.mul_(mask)
    del mask
    if rescale == "inverse":
        return delta.div_(density)
    if before is not None:
        after = delta.abs().sum()
        if before >= 1e-7 and after >= 1e-7:
            delta.mul_(before / after)
    return delta


def task_vectors(base: Tensor, tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(θ_base in the work dtype, task vectors τᵢ = θᵢ − θ_base stacked into one new [n, *shape] tensor)."""
    dtype = _work_dtype(base)
    base = base.to(dtype)
    stacked = torch.empty((len(tensors), *base.shape), dtype=dtype, device=base.device)
    for row, tensor in zip(stacked, tensors):
        torch.sub(tensor.to(dtype), base, out=row)
    return base, stacked


def elect_sign(deltas: Tensor, consensus: str = "sum") -> Tensor:
    """TIES sign election over weighted task vectors `deltas` [n, *shape] -> γ ∈ {−1, +1} [*shape].

    γ = sign(Σᵢ δᵢ) ('sum', the paper's mass vote) or sign(Σᵢ sign δᵢ) ('count'); a tie counts as +.
    """
    if consensus not in ("sum", "count"):
        raise ValueError(f"unknown TIES consensus '{consensus}' (sum or count)")
    if consensus == "sum":
        vote = deltas.sum(dim=0)
    else:
        vote = torch.zeros(deltas.shape[1:], dtype=deltas.dtype, device=deltas.device)
        for row in deltas:
            vote.add_(row.sign())
    return vote.ge_(0).mul_(2).sub_(1)


def combine_task_vectors(base: Tensor, deltas: Tensor, weight: Sequence[float], *, ties: bool,
                         consensus: str, normalize: bool, scale: float) -> Tensor:
    """θ = θ_base + scale · Σᵢ mᵢwᵢδᵢ / D, the shared core of task arithmetic, TIES and DARE.

    `deltas` [n, *shape] is consumed (scaled and masked in place). Without TIES mᵢ = 1 and
    D = Σᵢ wᵢ; with TIES mᵢ = [sign(wᵢδᵢ) = γ] (zeros never agree) and D = Σᵢ mᵢwᵢ per entry.
    D is used only with `normalize`; a zero D counts as 1.
    """
    for row, w in zip(deltas, weight):
        row.mul_(float(w))
    if ties:
        elected = elect_sign(deltas, consensus)
        divisor = torch.zeros_like(base)
        for row, w in zip(deltas, weight):
            agree = row.sign().eq_(elected)                                # 1.0 where the signs agree
            row.mul_(agree)
            divisor.add_(agree, alpha=float(w))
            del agree
        del elected
        divisor[divisor == 0] = 1
    else:
        total = float(sum(weight))
        divisor = total if abs(total) >= 1e-8 else 1.0                     # cancelling weights: no rescale
    mixed = deltas.sum(dim=0)
    if normalize:
        mixed.div_(divisor)
    return mixed.mul_(scale).add_(base)


# --- registered methods -------------------------------------------------------------------------

@merge_method("linear", uses_base=False, per_input={"weight": 1.0},
              paper="https://arxiv.org/abs/2203.05482")
def linear(base: Tensor | None, tensors: Sequence[Tensor], weight: Sequence[float],
           normalize: bool = True) -> Tensor:
    """Weighted average θ = Σᵢ wᵢθᵢ / Σᵢ wᵢ (or the plain weighted sum without `normalize`).

    Model soups, Wortsman et al., 2022 (arXiv:2203.05482). Uniform weights give the uniform soup.
    """
    dtype = _work_dtype(tensors[0])
    out = torch.zeros(tensors[0].shape, dtype=dtype)
    for tensor, w in zip(tensors, weight):
        out.add_(tensor.to(dtype), alpha=float(w))
    if normalize:
        total = float(sum(weight))
        if total == 0:
            raise ValueError("linear merge weights sum to 0, so they cannot be normalized")
        out.div_(total)
    return out


@merge_method("task_arithmetic", uses_base=True, per_input={"weight": 1.0},
              paper="https://arxiv.org/abs/2212.04089")
def task_arithmetic(base: Tensor, tensors: Sequence[Tensor], weight: Sequence[float],
                    normalize: bool = False, scale: float = 1.0) -> Tensor:
    """θ = θ_base + scale · Σᵢ wᵢ(θᵢ − θ_base)  (÷ Σᵢ wᵢ with `normalize`).

    Editing models with task arithmetic, Ilharco et al., 2023 (arXiv:2212.04089).
    """
    base, deltas = task_vectors(base, tensors)
    return combine_task_vectors(base, deltas, weight, ties=False, consensus="sum", normalize=normalize, scale=scale)


@merge_method("ties", uses_base=True, per_input={"weight": 1.0, "density": 1.0},
              paper="https://arxiv.org/abs/2306.01708")
def ties(base: Tensor, tensors: Sequence[Tensor], weight: Sequence[float], density: Sequence[float],
         normalize: bool = True, scale: float = 1.0, consensus: str = "sum") -> Tensor:
    """TIES: trim each task vector to its top-`density` magnitudes, elect a sign per entry, disjoint mean.

    θ = θ_base + scale · Σᵢ mᵢwᵢτᵢ / Σᵢ mᵢwᵢ with τᵢ = trim(θᵢ − θ_base) and mᵢ the agreement mask.
    Yadav et al., 2023 (arXiv:2306.01708).
    """
    base, deltas = task_vectors(base, tensors)
    for row, p in zip(deltas, density):
        magnitude_trim_(row, p)
    return combine_task_vectors(base, deltas, weight, ties=True, consensus=consensus, normalize=normalize,
                                scale=scale)


@merge_method("dare_linear", uses_base=True, per_input={"weight": 1.0, "density": 1.0},
              paper="https://arxiv.org/abs/2311.03099")
def dare_linear(base: Tensor, tensors: Sequence[Tensor], weight: Sequence[float], density: Sequence[float],
                normalize: bool = False, scale: float = 1.0, rescale: str = "inverse",
                generator: torch.Generator | None = None) -> Tensor:
    """DARE + task arithmetic: θ = θ_base + scale · Σᵢ wᵢ·drop(θᵢ − θ_base, pᵢ).

    Language models are Super Mario, Yu et al., 2023 (arXiv:2311.03099). See `random_drop`.
    """
    base, deltas = task_vectors(base, tensors)
    for row, p in zip(deltas, density):
        random_drop_(row, p, rescale, generator)
    return combine_task_vectors(base, deltas, weight, ties=False, consensus="sum", normalize=normalize,
                                scale=scale)


@merge_method("dare_ties", uses_base=True, per_input={"weight": 1.0, "density": 1.0},
              paper="https://arxiv.org/abs/2311.03099")
def dare_ties(base: Tensor, tensors: Sequence[Tensor], weight: Sequence[float], density: Sequence[float],
              normalize: bool = False, scale: float = 1.0, rescale: str = "inverse", consensus: str = "sum",
              generator: torch.Generator | None = None) -> Tensor:
    """DARE drop, then TIES sign election and disjoint merge of the surviving entries (arXiv:2311.03099)."""
    base, deltas = task_vectors(base, tensors)
    for row, p in zip(deltas, density):
        random_drop_(row, p, rescale, generator)
    return combine_task_vectors(base, deltas, weight, ties=True, consensus=consensus, normalize=normalize,
                                scale=scale)


@merge_method("slerp", uses_base=True, max_inputs=1,
              paper="https://en.wikipedia.org/wiki/Slerp")
def slerp(base: Tensor, tensors: Sequence[Tensor], t: float = 0.5, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> Tensor:
    """Spherical interpolation from θ₀ = base (t=0) to θ₁ = tensors[0] (t=1), each flattened to a vector.

    Ω = arccos(θ̂₀·θ̂₁) between the unit directions; θ = sin((1−t)Ω)/sin Ω · θ₀ + sin(tΩ)/sin Ω · θ₁.
    When |θ̂₀·θ̂₁| > dot_threshold (parallel or antiparallel) sin Ω ≈ 0, so it falls back to the
    linear (1−t)θ₀ + tθ₁. Zero vectors (norm ≤ eps) are not normalized. Shoemake, 1985.
    """
    dtype = _work_dtype(base)
    v0, v1 = base.to(dtype).reshape(-1), tensors[0].to(dtype).reshape(-1)
    n0, n1 = v0.norm(), v1.norm()
    n0 = torch.where(n0 > eps, n0, 1)
    n1 = torch.where(n1 > eps, n1, 1)
    dot = (torch.dot(v0, v1) / (n0 * n1)).clamp(-1, 1)       # cosine without normalized copies
    t_ = torch.tensor(t, dtype=dtype)
    if dot.abs() > dot_threshold:
        a, b = 1 - t_, t_
    else:
        omega = torch.acos(dot)
        a, b = torch.sin((1 - t_) * omega) / torch.sin(omega), torch.sin(t_ * omega) / torch.sin(omega)
    return torch.mul(v0, a).addcmul_(v1, b).reshape(base.shape)
