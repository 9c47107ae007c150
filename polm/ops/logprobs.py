"""Token log-probabilities, masked reductions and chunked cross-entropy: the ONE place for this math.

Labels follow the Hugging Face convention (not shifted, -100 = ignore); `causal_targets` does the
shift once so every recipe agrees on which position predicts which token.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """z = (h @ weightᵀ) / T for one chunk of rows, at least fp32: h [c,H], weight [V,H] -> [c,V].

    The matmul runs in the inputs' dtype (or under the caller's autocast), as the model's own output
    layer would, and only its result is upcast.
    """
    z = h @ weight.T
    z = z.to(_acc(z.dtype))
    return z.div_(temperature) if temperature != 1.0 else z


def _softmax_(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(t) = z[t] - lse(z), lse(z)) per row of z [c,V], t [c]; z is overwritten by softmax(z).

    With m = max z: lse = m + log Σ exp(z - m). The exp is taken in place, so a chunk costs ONE [c,V]
    buffer (torch.logsumexp would allocate a second one).
    """
    picked = z.gather(-1, t[:, None]).squeeze(-1)
    top = z.amax(-1, keepdim=True)
    total = z.sub_(top).exp_().sum(-1, keepdim=True)
    z.div_(total)
    lse = (top + total.log()).squeeze(-1)
    return picked - lse, lse


def _logprob_grad_(p: torch.Tensor, t: torch.Tensor, g: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """d(Σ g·log p(t)) / d logits for logits z·T: g (onehot(t) - p) / T, in place in softmax p [c,V]; g [c]."""
    g = g / temperature if temperature != 1.0 else g
    p.mul_(-g[:, None])
    p[torch.arange(len(t), device=p.device), t] += g
    return p


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
            softmax = (flat[i:j].to(lse.dtype) - lse[i:j, None]).exp_()
            grad[i:j] = _logprob_grad_(softmax, safe[i:j], g_out[i:j]).to(grad.dtype)
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
    m = max z: CE = m + log Σ exp(z - m) - z[t], and d CE / dz = softmax(z) - onehot(t); the softmax
    is made in place in the logits buffer (`_softmax_`), so a chunk costs ONE [c,V] buffer.
    """
    grad = _chunk_logits(h, weight)
    logp, _ = _softmax_(grad, t)
    grad[torch.arange(len(t), device=t.device), t] -= 1.0
    return -logp.sum(), grad


def _target_rows(t: torch.Tensor) -> torch.Tensor | None:
    """Indices of the rows that have a target, or None when every row has one (nothing to skip).

    Prompt, padding and packing-boundary rows carry no loss, so the vocabulary projection (the
    largest matmul of a small model) is computed only for the others.
    """
    valid = t != IGNORE_INDEX
    return None if bool(valid.all()) else valid.nonzero().squeeze(1)


def _kept_rows(hidden: torch.Tensor, targets: torch.Tensor):
    """(hidden rows [K,H], targets [K], their indices [K] or None when all N rows are kept) of the
    rows that have a target."""
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    rows = _target_rows(t)
    return (h, t, None) if rows is None else (h.index_select(0, rows), t.index_select(0, rows), rows)


def _spread(values: torch.Tensor, rows: torch.Tensor | None, n: int) -> torch.Tensor:
    """Kept-row values [K,...] back at their rows among n; rows without a target get 0."""
    if rows is None:
        return values
    return values.new_zeros((n, *values.shape[1:])).index_copy_(0, rows, values)


def scaled_saved_grads(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Backward of a loss whose forward already computed d loss / d (hidden, weight) and saved them:
    the chain rule only scales them by the scalar upstream gradient."""
    grad_h, grad_w = ctx.saved_tensors
    grad_h = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
    grad_w = grad_w * grad_out.to(grad_w.dtype) if grad_w is not None else None
    return grad_h, grad_w


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Σ CE(hidden @ weightᵀ, targets) without the full [N,V] logits (as Liger's fused linear CE).

    Forward keeps only the rows that have a target (prompt, padding and packing-boundary rows get a
    zero gradient without being projected), walks them in chunks and computes the loss AND the
    gradients for hidden [N,H] and weight [V,H] at once; it saves only those gradients, and backward
    scales them by grad_output.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        want_h, want_w = hidden.requires_grad, weight.requires_grad
        kept_h, kept_t, rows = _kept_rows(hidden, targets)
        grad_h = torch.empty_like(kept_h) if want_h else None
        acc = _acc(torch.promote_types(hidden.dtype, weight.dtype))
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        loss = torch.zeros((), dtype=acc, device=hidden.device)
        for i, j in _row_chunks(kept_h.shape[0], chunk_size):
            chunk_loss, g = _ce_chunk(kept_h[i:j], weight, kept_t[i:j])
            loss += chunk_loss
            if want_h:
                grad_h[i:j] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
            if want_w:
                grad_w.addmm_(g.T, kept_h[i:j].to(acc))
        ctx.save_for_backward(   # rows without a target keep a zero gradient
            _spread(grad_h, rows, targets.numel()).view(hidden.shape) if want_h else None,
            grad_w.to(weight.dtype) if want_w else None,
        )
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        return (*scaled_saved_grads(ctx, grad_out), None, None)


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
    h, t, _ = _kept_rows(hidden, targets)
    total = torch.zeros((), dtype=_acc(torch.promote_types(hidden.dtype, weight.dtype)), device=hidden.device)
    for i, j in _row_chunks(h.shape[0], chunk_size):
        total += _ce_chunk(h[i:j], weight, t[i:j])[0]
    return total


def _fused_rows(h: torch.Tensor, weight: torch.Tensor, t: torch.Tensor, chunk_size: int | None,
                temperature: float, entropy: bool, jacobian: bool) -> tuple[torch.Tensor, ...]:
    """For rows that ALL have a target, chunk by chunk of z = h @ weightᵀ / T:
    log p(t) [K], lse(z) [K], entropy [K] (or None), and (or None) d log p(t) / d h [K,H].

    With p = softmax(z): d log p(t) / d h = (weight[t] - p @ weight) / T, a [K,H] tensor as small as h
    that backward only scales by each row's upstream gradient; entropy = -Σ p log p (= lse - Σ p·z),
    taken in place once p is no longer needed, so a chunk costs ONE [c,V] buffer.
    """
    acc = _acc(torch.promote_types(h.dtype, weight.dtype))
    logp = torch.empty(h.shape[0], dtype=acc, device=h.device)
    lse, ent = torch.empty_like(logp), torch.empty_like(logp) if entropy else None
    jac = torch.empty((h.shape[0], h.shape[1]), dtype=acc, device=h.device) if jacobian else None
    for i, j in _row_chunks(h.shape[0], chunk_size):
        p = _chunk_logits(h[i:j], weight, temperature)
        logp[i:j], lse[i:j] = _softmax_(p, t[i:j])
        if jacobian:
            jac[i:j] = (weight[t[i:j]] - p.to(weight.dtype) @ weight).to(acc).div_(temperature)
        if entropy:   # xlogy: 0 log 0 = 0 where exp underflowed
            ent[i:j] = p.xlogy_(p).sum(-1).neg_()
    return logp, lse, ent, jac


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    """(device type, enabled, dtype) of the autocast in force, to re-enter it in a backward."""
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _FusedTokenLogprobs(torch.autograd.Function):
    """log p(target) and entropy of softmax(hidden @ weightᵀ / T) without the [N,V] logits.

    Forward walks the rows that have a target chunk by chunk and keeps, besides the [N] outputs, the
    [K,H] d log p / d hidden (when hidden needs a gradient) and, only when weight needs one (full
    fine-tuning; LoRA leaves the head frozen), hidden, targets and lse for backward to recompute each
    chunk's softmax: dW = Σ_rows dzᵀ h with dz = g (onehot(t) - softmax(z)) / T.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, temperature, entropy):
        want_h, want_w = ctx.needs_input_grad[:2]
        h, t, rows = _kept_rows(hidden, targets)
        logp, lse, ent, jac = _fused_rows(h, weight, t, chunk_size, temperature, entropy, want_h)
        ctx.save_for_backward(rows, jac, *((weight, h, t, lse) if want_w else (None,) * 4))
        ctx.settings = (hidden.shape, hidden.dtype, chunk_size, temperature)
        ctx.autocast = _autocast_state(hidden.device.type) if want_w else None   # to recompute z as it was
        n = targets.numel()
        ent = _spread(ent, rows, n).view(targets.shape) if entropy else logp.new_empty(0)
        ctx.mark_non_differentiable(ent)
        return _spread(logp, rows, n).view(targets.shape), ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        rows, jac, weight, h, t, lse = ctx.saved_tensors
        shape, dtype, chunk_size, temperature = ctx.settings
        g = grad_logp.reshape(-1)
        g = g if rows is None else g.index_select(0, rows)
        grad_h = grad_w = None
        if jac is not None:
            grad_h = _spread(jac * g[:, None].to(jac.dtype), rows, shape[:-1].numel()).to(dtype).view(shape)
        if weight is not None:
            device_type, autocast, autocast_dtype = ctx.autocast
            g = g.to(lse.dtype)
            grad_w = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device)
            for i, j in _row_chunks(h.shape[0], chunk_size):
                with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast):
                    z = _chunk_logits(h[i:j], weight, temperature)
                dz = _logprob_grad_(z.sub_(lse[i:j, None]).exp_(), t[i:j], g[i:j], temperature)
                grad_w.addmm_(dz.T, h[i:j].to(dz.dtype))
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None


def fused_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int | None = 1024,
                         temperature: float = 1.0, entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(hidden @ weightᵀ / T)[target] per token, never materialising the [*,V] logits.

    hidden [*,H] (the last hidden state), weight [V,H] (the output layer; tied embeddings work),
    targets [*] with -100 = ignore -> fp32 (or fp64) logprobs [*], 0 where ignored, differentiable
    for hidden and weight under any upstream gradient. With `entropy`, returns (logprobs, H) where
    H = lse(z) - Σ softmax(z)·z is the entropy of softmax(z), z = hidden @ weightᵀ / T, without
    gradient (a metric), 0 where ignored. Rows are processed `chunk_size` at a time; rows without a
    target are never projected.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree")
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        logp, ent = _FusedTokenLogprobs.apply(hidden, weight, targets, chunk_size, temperature, entropy)
    else:
        h, t, rows = _kept_rows(hidden, targets)
        kept, _, ent, _ = _fused_rows(h, weight, t, chunk_size, temperature, entropy, jacobian=False)
        logp = _spread(kept, rows, targets.numel()).view(targets.shape)
        ent = _spread(ent, rows, targets.numel()).view(targets.shape) if entropy else None
    return (logp, ent) if entropy else logp


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


@dataclass
class ModelLogprobs:
    """What `model_logprobs` returns: logprobs [B,K] (fp32, 0 where the target is -100), and when asked
    the entropy [B,K] (no gradient) and the last hidden state [B,K,H] at the predicting positions."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


def model_logprobs(model: nn.Module, inputs: dict, targets: torch.Tensor, chunk_size: int | None = 1024,
                   temperature: float = 1.0, *, offset: int = 0, entropy: bool = False,
                   hidden: bool = False) -> ModelLogprobs:
    """log softmax(logits / T)[target] of the K positions that end `offset` before the last.

    inputs: the model's keyword inputs (input_ids [B,L], ...); targets [B,K] (-100 = ignore), where
    targets[:, k] is predicted by position L - K - offset + k: `causal_targets` of whole rows use
    offset 0, the last K tokens of each row (RL completions) offset 1. With `chunk_size` and a plain
    output layer (`_plain_head`) only the backbone runs and `fused_token_logprobs` projects its last
    hidden state, so no [B,K,V] logits exist; otherwise (chunk_size None, LoRA on lm_head, soft-capped
    or rescaled logits) the model's logits are used.
    """
    K, L = targets.shape[1], inputs["input_ids"].shape[1]
    inputs = {**inputs, "use_cache": False}   # no KV cache: it also keeps packed sequences apart
    shortcut = _plain_head(model) if chunk_size is not None else None
    if shortcut is not None:
        body, head = shortcut
        states = body(**inputs).last_hidden_state[:, L - K - offset:L - offset]
        out = fused_token_logprobs(states, head.weight, targets, chunk_size, temperature, entropy)
        logp, ent = out if entropy else (out, None)
        return ModelLogprobs(logp, ent, states if hidden else None)
    keep = {"logits_to_keep": K + offset} if K + offset < L else {}
    out = model(**inputs, output_hidden_states=hidden, **keep)
    states = out.hidden_states[-1][:, L - K - offset:L - offset] if hidden else None
    logits = out.logits[:, out.logits.shape[1] - K - offset:out.logits.shape[1] - offset]
    del out   # the unscaled logits must not outlive their /T copy
    if temperature != 1.0:
        logits = logits / temperature
    return ModelLogprobs(token_logprobs(logits, targets, chunk_size), _entropy(logits) if entropy else None, states)


@torch.no_grad()
def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """lse(z) - Σ softmax(z)·z per position: [B,K,V] -> [B,K] (the logits path of `model_logprobs`)."""
    z = logits.float()
    return z.logsumexp(-1) - (z.softmax(-1) * z).sum(-1)
