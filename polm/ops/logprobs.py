"""Token log-probabilities, masked reductions and chunked cross-entropy: the ONE place for this math.

Labels follow the Hugging Face convention (not shifted, -100 = ignore); `causal_targets` does the
shift once so every recipe agrees on which position predicts which token.
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100

# Attributes that mean the model transforms logits after its output layer (Gemma soft-capping,
# Cohere/Granite scaling): the hidden-state shortcut would then compute a different loss.
_SOFTCAPS = ("final_logit_softcapping", "output_logit_soft_cap")
_SCALES = ("logit_scale", "logits_scaling")


def causal_targets(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token targets: `targets[:, t] = labels[:, t+1]`, last column -100.  [B,T] -> [B,T].

    With `position_ids` (packed rows), a target whose position is 0 starts a new sequence and is
    never predicted from the previous sequence's last token, so it is ignored too.
    """
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    if position_ids is not None:
        targets[:, :-1].masked_fill_(position_ids[:, 1:] == 0, IGNORE_INDEX)
    return targets


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ x over positions where mask is true (masked values never leak, even NaN)."""
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ mask·x / Σ mask, and 0 (not NaN) where the mask is empty."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1).to(x.dtype)


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: at least fp32 (bf16/fp16 logits are upcast, fp64 stays fp64)."""
    return torch.promote_types(dtype, torch.float32)


def _row_chunks(n: int, chunk_size: int | None) -> list[tuple[int, int]]:
    """[(start, stop)] covering rows 0..n in pieces of `chunk_size` (one piece when None)."""
    step = max(1, chunk_size or n)
    return [(i, min(i + step, n)) for i in range(0, n, step)]


class _TokenLogprobs(torch.autograd.Function):
    """log p(target) = logit[target] - logsumexp(logit), chunk of rows by chunk of rows.

    Saves only the logits (which exist anyway) and the [N] fp32 logsumexp; backward recomputes
    softmax per chunk: d logp / d logit = onehot(target) - softmax(logit).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
        flat, tgt = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        valid = tgt != IGNORE_INDEX
        safe = torch.where(valid, tgt, 0)
        lse = torch.empty(tgt.shape, dtype=_acc(logits.dtype), device=logits.device)
        picked = torch.empty_like(lse)
        for i, j in _row_chunks(flat.shape[0], chunk_size):
            rows = flat[i:j].to(lse.dtype)
            lse[i:j] = rows.logsumexp(-1)
            picked[i:j] = rows.gather(-1, safe[i:j, None]).squeeze(-1)
        ctx.save_for_backward(logits, safe, valid, lse)
        ctx.chunk_size = chunk_size
        return torch.where(valid, picked - lse, 0.0).view(targets.shape)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, safe, valid, lse = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        g_out = torch.where(valid, grad_out.reshape(-1).to(lse.dtype), 0.0)
        grad = torch.empty_like(flat)
        for i, j in _row_chunks(flat.shape[0], ctx.chunk_size):
            chunk = (flat[i:j].to(lse.dtype) - lse[i:j, None]).exp_().mul_(-g_out[i:j, None])
            chunk[torch.arange(j - i, device=chunk.device), safe[i:j]] += g_out[i:j]
            grad[i:j] = chunk.to(grad.dtype)
        return grad.view(logits.shape), None, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """fp32 log-probability of each target token.  logits [B,T,V], targets [B,T] -> [B,T].

    `log p = logit[target] - logsumexp(logit)`, computed `chunk_size` rows at a time (so no fp32
    copy of the whole [B,T,V] exists); positions with target -100 get 0.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} disagree")
    return _TokenLogprobs.apply(logits, targets, chunk_size)


def _ce_chunk(h: torch.Tensor, weight: torch.Tensor, t: torch.Tensor):
    """Loss sum and dloss/dlogits (at least fp32) of one chunk of rows that ALL have a target.

    h [c,H], weight [V,H], t [c] (no -100: callers drop those rows first). With z = h @ weightᵀ and
    m = max z: CE = m + log Σ exp(z - m) - z[t], and d CE / dz = softmax(z) - onehot(t). exp(z - m) is
    computed in place in the logits buffer and divided by its sum to become the softmax, so a chunk
    costs ONE [c,V] buffer (logsumexp would allocate a second one for its exp).
    """
    logits = h @ weight.T
    logits = logits.to(_acc(logits.dtype))
    picked = logits.gather(-1, t[:, None]).squeeze(-1)
    top = logits.amax(-1, keepdim=True)
    grad = logits.sub_(top).exp_()
    total = grad.sum(-1, keepdim=True)
    loss = (top.squeeze(-1) + total.squeeze(-1).log() - picked).sum()
    grad.div_(total)
    grad[torch.arange(len(t), device=t.device), t] -= 1.0
    return loss, grad


def _target_rows(t: torch.Tensor) -> torch.Tensor | None:
    """Indices of the rows that have a target, or None when every row has one (nothing to skip).

    Prompt, padding and packing-boundary rows carry no loss, so the vocabulary projection (the
    largest matmul of a small model) is computed only for the others.
    """
    valid = t != IGNORE_INDEX
    return None if bool(valid.all()) else valid.nonzero().squeeze(1)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Σ CE(hidden @ weightᵀ, targets) without the full [N,V] logits (as Liger's fused linear CE).

    Forward keeps only the rows that have a target (prompt, padding and packing-boundary rows get a
    zero gradient without being projected), walks them in chunks and computes the loss AND the
    gradients for hidden [N,H] and weight [V,H] at once; it saves only those gradients, and backward
    scales them by grad_output.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        want_h, want_w = hidden.requires_grad, weight.requires_grad
        grad_h = torch.zeros_like(h) if want_h else None
        acc = _acc(torch.promote_types(hidden.dtype, weight.dtype))
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        rows = _target_rows(t)
        kept_h, kept_t = (h, t) if rows is None else (h.index_select(0, rows), t.index_select(0, rows))
        for i, j in _row_chunks(kept_h.shape[0], chunk_size):
            chunk_loss, g = _ce_chunk(kept_h[i:j], weight, kept_t[i:j])
            loss += chunk_loss
            if want_h:
                g_h = (g.to(weight.dtype) @ weight).to(h.dtype)
                if rows is None:
                    grad_h[i:j] = g_h
                else:  # rows without a target keep a zero gradient
                    grad_h.index_copy_(0, rows[i:j], g_h)
            if want_w:
                grad_w.addmm_(g.T, kept_h[i:j].to(acc))
        ctx.save_for_backward(
            grad_h.view(hidden.shape) if want_h else None,
            grad_w.to(weight.dtype) if want_w else None,
        )
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        grad_h = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        grad_w = grad_w * grad_out.to(grad_w.dtype) if grad_w is not None else None
        return grad_h, grad_w, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Σ_n CE(hidden[n] @ weightᵀ, targets[n]) in fp32, never materialising [N,V] logits.

    hidden [N,H] or [B,T,H], weight [V,H] (the output layer; tied embeddings work), targets [N] or
    [B,T] with -100 = ignore. Returns a scalar loss SUM. A frozen weight (LoRA) gets no gradient.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _ChunkedCrossEntropy.apply(hidden, weight, targets, chunk_size)
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    rows = _target_rows(t)
    if rows is not None:
        h, t = h.index_select(0, rows), t.index_select(0, rows)
    total = torch.zeros((), dtype=_acc(torch.promote_types(hidden.dtype, weight.dtype)), device=hidden.device)
    for i, j in _row_chunks(h.shape[0], chunk_size):
        total += _ce_chunk(h[i:j], weight, t[i:j])[0]
    return total


def _unwrap_peft(model: nn.Module) -> nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _backbone(base: nn.Module) -> nn.Module | None:
    """The decoder body that returns `last_hidden_state` (`.model`, `.transformer`, ...)."""
    body = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    if isinstance(body, nn.Module) and body is not base:
        return body
    get_decoder = getattr(base, "get_decoder", None)
    return get_decoder() if callable(get_decoder) else None


def _transforms_logits(base: nn.Module) -> bool:
    """True when the model soft-caps or rescales logits after its output layer."""
    config = getattr(base, "config", None)
    for owner in (base, config, getattr(config, "text_config", None)):
        if any(getattr(owner, name, None) is not None for name in _SOFTCAPS):
            return True
        for name in _SCALES:
            value = getattr(owner, name, None)
            if isinstance(value, torch.Tensor) or (value is not None and value != 1.0):
                return True
    return False


def _plain_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(backbone, output layer) when loss = CE(backbone(x) @ head.weightᵀ) exactly, else None."""
    base = _unwrap_peft(model)
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    # an exact nn.Linear: LoRA / quantized / wrapped heads are subclasses or other modules
    if type(head) is not nn.Linear or head.bias is not None or _transforms_logits(base):
        return None
    body = _backbone(base)
    return (body, head) if body is not None else None


def _model_inputs(batch: dict) -> dict:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inputs.setdefault("use_cache", False)  # training never reuses a KV cache
    return inputs


def causal_lm_loss(model: nn.Module, batch: dict, chunk_size: int | None = 1024) -> tuple[torch.Tensor, int]:
    """(Σ next-token CE over target tokens, number of target tokens) for a padded or packed batch.

    With `chunk_size`, runs the backbone only and applies `chunked_cross_entropy` to its last hidden
    state and the output layer's weight, so the [B,T,V] logits never exist; models whose head is not
    a plain Linear (LoRA on lm_head) or that rescale/soft-cap logits use the logits path instead.
    """
    targets = causal_targets(batch["labels"], batch.get("position_ids"))
    count = int((targets != IGNORE_INDEX).sum())
    inputs = _model_inputs(batch)
    shortcut = _plain_head(model) if chunk_size is not None else None
    if shortcut is not None:
        body, head = shortcut
        hidden = body(**inputs).last_hidden_state
        return chunked_cross_entropy(hidden, head.weight, targets, chunk_size), count
    logits = model(**inputs).logits
    return -token_logprobs(logits, targets, chunk_size).sum(), count


def sequence_logprobs(model: nn.Module, batch: dict, chunk_size: int | None = 1024) -> torch.Tensor:
    """Σ_t log p(target_t) per row: [B]. Used by preference losses (DPO: log π(y|x))."""
    targets = causal_targets(batch["labels"], batch.get("position_ids"))
    logits = model(**_model_inputs(batch)).logits
    return token_logprobs(logits, targets, chunk_size).sum(-1)
