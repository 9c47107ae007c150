"""Vision-language pretraining losses as pure tensor functions, registered by name, and their mixture.

- `itc`: image-text contrastive, symmetric InfoNCE with a learned temperature (CLIP, Radford et al.
  2021; ALBEF, Li et al. 2021).
- `itm`: image-text matching, binary CE over match / no-match logits, on negatives mined from the ITC
  similarities (`hard_negatives`, BLIP, Li et al. 2022; ALBEF).
- `itg`: image-grounded text generation (captioning): next-token CE on target tokens only, through
  polm's chunked cross-entropy.
`mix_losses` sums them with configurable weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from polm.errors import PolmError, did_you_mean
from polm.ops.logprobs import IGNORE_INDEX, causal_targets, chunked_cross_entropy
from polm.registry import Registry

VLM_LOSSES = Registry("vision-language loss")

MAX_LOGIT_SCALE = math.log(100.0)   # CLIP clamps the learned 1/τ at 100


def itc_similarity(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarities s_ij = <î_i, t̂_j> of L2-normalised embeddings.  [B,D], [B,D] -> [B,B]."""
    return F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T


@VLM_LOSSES.register("itc")
def itc_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
             max_logit_scale: float = MAX_LOGIT_SCALE) -> torch.Tensor:
    """Symmetric InfoNCE: ½ [CE(z, diag) + CE(zᵀ, diag)] with z = exp(min(logit_scale, max)) · s.

    image_emb, text_emb [B,D] (pair i matches i); logit_scale: a learned scalar log(1/τ). -> scalar mean.
    """
    if image_emb.shape[0] != text_emb.shape[0] or image_emb.shape[0] < 2:
        raise ValueError(f"itc needs B >= 2 matching pairs, got {image_emb.shape[0]} images, {text_emb.shape[0]} texts")
    z = logit_scale.clamp(max=max_logit_scale).exp() * itc_similarity(image_emb, text_emb)
    target = torch.arange(z.shape[0], device=z.device)
    return 0.5 * (F.cross_entropy(z, target) + F.cross_entropy(z.T, target))


def hard_negative_weights(sim: torch.Tensor, temperature: float = 1.0,
                          same: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling weights of negatives (BLIP): w = softmax(s / τ) over each row (image -> texts) and each
    column (text -> images), with the positive pair and any `same` [B,B] (also-matching) pair set to 0
    and the rest renormalised.  sim [B,B] -> (w_i2t [B,B], w_t2i [B,B]); row i of w_t2i is text i's."""
    blocked = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    if same is not None:
        blocked = blocked | same.bool()
    if bool(blocked.all(dim=1).any()) or bool(blocked.all(dim=0).any()):
        raise ValueError("every pair has at least one negative only if some other item does not match it")
    logits = (sim.detach().float() / temperature)
    w_i2t = logits.masked_fill(blocked, float("-inf")).softmax(dim=1)
    w_t2i = logits.T.masked_fill(blocked.T, float("-inf")).softmax(dim=1)
    return w_i2t, w_t2i


def hard_negatives(sim: torch.Tensor, *, temperature: float = 1.0, same: torch.Tensor | None = None,
                   sample: bool = True, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative text index per image [B], negative image index per text [B]) mined from ITC similarities:
    drawn from `hard_negative_weights` (BLIP), or the most similar non-matching one when not `sample`."""
    w_i2t, w_t2i = hard_negative_weights(sim, temperature, same)
    if not sample:
        return w_i2t.argmax(dim=1), w_t2i.argmax(dim=1)
    return (torch.multinomial(w_i2t, 1, generator=generator).squeeze(1),
            torch.multinomial(w_t2i, 1, generator=generator).squeeze(1))


@VLM_LOSSES.register("itm")
def itm_loss(match_logits: torch.Tensor, is_match: torch.Tensor) -> torch.Tensor:
    """Binary matching CE: mean_m CE(logits_m, is_match_m), logits [M,2] as (no match, match). -> scalar."""
    return F.cross_entropy(match_logits.float(), is_match.long())


@VLM_LOSSES.register("itg")
def itg_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
             position_ids: torch.Tensor | None = None, chunk_size: int = 1024) -> torch.Tensor:
    """Captioning LM loss: mean over target tokens of CE(hidden_t @ weightᵀ, labels_{t+1}).

    hidden [B,T,H] (the LM's last hidden state), weight [V,H] (its output layer), labels [B,T] unshifted
    with -100 on prompt and image positions. 0 when no token is a target.
    """
    targets = causal_targets(labels, position_ids)
    count = int((targets != IGNORE_INDEX).sum())
    total = chunked_cross_entropy(hidden, weight, targets, chunk_size)
    return total / max(count, 1)


def mix_losses(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Σ_name weights[name] · losses[name] over the nonzero weights (a zero-weight loss is never read, so
    a NaN there cannot leak). All weights 0: a scalar zero on the losses' device."""
    total = None
    for name, w in weights.items():
        if name not in VLM_LOSSES:
            raise PolmError(f"unknown vision-language loss '{name}' in the loss weights", where=f"objectives.{name}",
                            fix=did_you_mean(name, VLM_LOSSES.names()))
        if w < 0:
            raise PolmError(f"loss weight {name}={w} is negative", where=f"objectives.{name}",
                            fix="Use a weight >= 0 (0 turns the loss off).")
        if w == 0:
            continue
        if name not in losses:
            raise PolmError(f"loss '{name}' has weight {w} but was not computed", where=f"objectives.{name}")
        term = w * losses[name]
        total = term if total is None else total + term
    if total is not None:
        return total
    ref = next(iter(losses.values()), None)
    return torch.zeros((), device=ref.device if ref is not None else None)
