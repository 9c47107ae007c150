"""Projectors from vision features [B,N,Dv] to LM embeddings [B,M,H], by name from a registry.

- `mlp2x_gelu` (LLaVA-1.5, Liu et al. 2023): Linear(Dv,H) -> GELU -> Linear(H,H); M = N.
- `pixel_shuffle` (nanoVLM / SmolVLM, Marafioti et al. 2025): the √N x √N grid is folded by `factor`
  (space-to-depth: each factor x factor block becomes one token of factor²·Dv), then Linear(factor²·Dv, H);
  M = ceil(√N / factor)². A grid side that `factor` does not divide is zero-padded to a multiple.
- `resampler` (a one-layer Q-Former / Perceiver resampler, Li et al. 2023; Alayrac et al. 2022):
  `num_queries` learned queries cross-attend to the features, then an MLP; M = num_queries.
Every projector takes (in_dim, out_dim, **options) and exposes `num_tokens(n_in)`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from polm.errors import PolmError
from polm.registry import Registry, check_options

PROJECTORS = Registry("projector")


@PROJECTORS.register("mlp2x_gelu")
class MLP2xGELU(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)

    def num_tokens(self, n_in: int) -> int:
        return n_in

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(features)))


def pixel_shuffle(features: torch.Tensor, factor: int) -> torch.Tensor:
    """[B,N,D] on a √N x √N grid -> [B,(g/f)²,f²·D] with g = √N padded up to a multiple of f.

    Token (i,j) of the output concatenates, row-major, the features of grid cells
    (f·i + a, f·j + b) for a, b in 0..f-1.
    """
    b, n, d = features.shape
    side = math.isqrt(n)
    if side * side != n:
        raise PolmError(f"pixel_shuffle needs a square grid of image tokens, got {n}",
                        fix="Use a tower whose feature map is square, or the mlp2x_gelu / resampler projector.")
    grid = features.view(b, side, side, d)
    padded = math.ceil(side / factor) * factor
    if padded != side:
        grid = nn.functional.pad(grid, (0, 0, 0, padded - side, 0, padded - side))
    g = padded // factor
    grid = grid.view(b, g, factor, g, factor, d).permute(0, 1, 3, 2, 4, 5)
    return grid.reshape(b, g * g, factor * factor * d)


@PROJECTORS.register("pixel_shuffle")
class PixelShuffleLinear(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, factor: int = 2):
        super().__init__()
        if factor < 1:
            raise PolmError(f"projector.options.factor must be at least 1, got {factor}")
        self.factor = factor
        self.proj = nn.Linear(in_dim * factor * factor, out_dim, bias=False)

    def num_tokens(self, n_in: int) -> int:
        return math.ceil(math.isqrt(n_in) / self.factor) ** 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_shuffle(features, self.factor))


@PROJECTORS.register("resampler")
class Resampler(nn.Module):
    """queries [M,H] -> LayerNorm -> cross-attention over Linear(features) -> + MLP (pre-norm residuals)."""

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 8, num_heads: int = 4):
        super().__init__()
        if out_dim % num_heads:
            raise PolmError(f"resampler: the LM width {out_dim} is not divisible by num_heads={num_heads}",
                            fix="Set model.projector.options.num_heads to a divisor of the LM hidden size.")
        self.queries = nn.Parameter(torch.randn(num_queries, out_dim) * out_dim ** -0.5)
        self.kv = nn.Linear(in_dim, out_dim)
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(out_dim), nn.LayerNorm(out_dim), nn.LayerNorm(out_dim)
        self.attn = nn.MultiheadAttention(out_dim, num_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(out_dim, 4 * out_dim), nn.GELU(), nn.Linear(4 * out_dim, out_dim))

    def num_tokens(self, n_in: int) -> int:
        return self.queries.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(self.kv(features))
        q = self.queries.unsqueeze(0).expand(features.shape[0], -1, -1)
        x = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


def build_projector(name: str, in_dim: int, out_dim: int, options: dict[str, Any] | None = None) -> nn.Module:
    cls = PROJECTORS.get(name)
    opts = check_options(cls.__init__, options or {}, where="model.projector.options", skip=3,
                         owner=f"projector '{name}'")
    return cls(in_dim, out_dim, **opts)
