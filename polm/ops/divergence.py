"""Chunked per-token losses over the vocabulary (distillation divergences): Σ_rows f(h @ Wᵀ) with only
`chunk_size` rows of [*,V] logits alive at a time, and the target-token rows of a model's last hidden state.

`chunked_rows_loss` is to any row-wise loss f what `chunked_cross_entropy` is to CE: the forward walks
the rows chunk by chunk, builds z = h @ Wᵀ for that chunk only, evaluates f and takes its gradient
for h and W at once (autograd on the chunk), keeping only those gradients for backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from polm.ops.logprobs import _kept_rows, _model_inputs, _plain_head, _row_chunks, scaled_saved_grads

# row_loss(logits [c,V], start, stop) -> per-row loss [c] for rows start..stop
RowLoss = Callable[[torch.Tensor, int, int], torch.Tensor]


def _project(h: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Logits of a chunk: h @ weightᵀ, or h itself when weight is None (h already holds logits)."""
    return h if weight is None else h @ weight.T


class _ChunkedRowLoss(torch.autograd.Function):
    """Σ_rows row_loss(hidden @ weightᵀ) with the gradients for hidden [K,H] and weight [V,H] taken chunk
    by chunk in forward (as `_ChunkedCrossEntropy`); backward only scales them by grad_output."""

    @staticmethod
    def forward(ctx, hidden, weight, row_loss, chunk_size):
        want_h = ctx.needs_input_grad[0]
        want_w = weight is not None and ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros_like(weight) if want_w else None
        w = weight.detach().requires_grad_(want_w) if weight is not None else None
        total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        for i, j in _row_chunks(hidden.shape[0], chunk_size):
            with torch.enable_grad():
                h = hidden[i:j].detach().requires_grad_(want_h)
                loss = row_loss(_project(h, w), i, j).sum()
                wanted = [x for x, on in ((h, want_h), (w, want_w)) if on]
                grads = list(torch.autograd.grad(loss, wanted)) if wanted else []
            total += loss.detach().to(total.dtype)
            if want_h:
                grad_h[i:j] = grads.pop(0)
            if want_w:
                grad_w += grads.pop(0)
        ctx.save_for_backward(grad_h, grad_w)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        return (*scaled_saved_grads(ctx, grad_out), None, None)


def chunked_rows_loss(hidden: torch.Tensor, weight: torch.Tensor | None, row_loss: RowLoss,
                      chunk_size: int | None = 1024) -> torch.Tensor:
    """Σ_n row_loss(z)[n] with z = hidden @ weightᵀ computed `chunk_size` rows at a time.

    hidden [K,H] (one row per target token) and weight [V,H] (the output layer), or weight None and
    hidden the logits [K,V] themselves. `row_loss(z [c,V], start, stop) -> [c]` reads whatever else it
    needs for rows start..stop (targets, the teacher's rows) itself. Differentiable for hidden and
    weight; memory O(chunk_size × V) beyond the inputs. A scalar SUM, at least fp32.
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or (weight is not None and weight.requires_grad)):
        return _ChunkedRowLoss.apply(hidden, weight, row_loss, chunk_size)
    total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
    for i, j in _row_chunks(hidden.shape[0], chunk_size):
        total += row_loss(_project(hidden[i:j], weight), i, j).sum().to(total.dtype)
    return total


@dataclass
class TargetRows:
    """A model's view of the target tokens of a batch: one row per target (K = Σ valid targets, in
    row-major order of the batch): `hidden` [K,H] the last hidden state predicting each target (or the
    logits [K,V] when `weight` is None), `weight` [V,H] the output layer, `targets` [K] the tokens."""

    hidden: torch.Tensor
    weight: torch.Tensor | None
    targets: torch.Tensor
    states: torch.Tensor | None = None    # the last hidden state [K,H] (= hidden on a plain head), when asked

    def logits(self, start: int, stop: int) -> torch.Tensor:
        """z [stop-start, V] of rows start..stop."""
        return _project(self.hidden[start:stop], self.weight)


def target_rows(model: nn.Module, inputs: dict, targets: torch.Tensor, *, chunked: bool = True,
                states: bool = False) -> TargetRows:
    """The rows of `model`'s output that predict each target (targets [B,T] aligned with inputs, -100 =
    none, as `causal_targets` gives them). On a plain output layer (`_plain_head`) and `chunked`, only
    the backbone runs: no [B,T,V] logits exist. Otherwise the logits' target rows are kept (then the
    last hidden state too when `states`)."""
    inputs = _model_inputs(inputs)
    shortcut = _plain_head(model) if chunked else None
    if shortcut is not None:
        body, head = shortcut
        h, t, _ = _kept_rows(body(**inputs).last_hidden_state, targets)
        return TargetRows(h, head.weight, t, h if states else None)
    out = model(**inputs, output_hidden_states=states)
    z, t, _ = _kept_rows(out.logits, targets)
    kept = _kept_rows(out.hidden_states[-1], targets)[0] if states else None
    return TargetRows(z, None, t, kept)
