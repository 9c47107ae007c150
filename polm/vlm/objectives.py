"""ITC / ITM / ITG on a composed VLM's batch, mixed by weight (the pure losses are polm.losses.vlm).

Per micro-batch of B (image, prompt, answer) rows, each with exactly one image:
- ITG: answer-token CE of the LM on the spliced sequence (mean over target tokens).
- ITC: image embedding = mean of the image's projected tokens; text embedding = mean of the LM's last
  hidden state over the answer tokens run alone (no image, no prompt); symmetric InfoNCE with the
  learned temperature of `PretrainHeads`.
- ITM: a 2-way head on the LM's last hidden state at the final answer token; positives are the B
  rows, negatives pair each image with the hardest-sampled other answer and each answer with a
  hard-sampled other image (BLIP), mined from the ITC similarities; rows whose answer equals another
  row's are never each other's negatives. A micro-batch in which some row has no different answer
  contributes no ITM term (0).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from polm.errors import PolmError
from polm.losses.vlm import hard_negatives, itc_loss, itc_similarity, itm_loss, mix_losses
from polm.ops.logprobs import IGNORE_INDEX, causal_targets, token_logprobs
from polm.vlm.model import ComposedVLM


class PretrainHeads(nn.Module):
    """What ITC and ITM add to the model: log(1/τ) (CLIP's init τ = 0.07) and the match head."""

    def __init__(self, width: int):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.itm_head = nn.Linear(width, 2)


def _last_hidden(vlm: ComposedVLM, batch: dict, image_features: torch.Tensor | None = None):
    inputs = vlm.lm_inputs({**batch, **({"image_features": image_features} if image_features is not None else {})})
    out = vlm.lm(**inputs, output_hidden_states=True, use_cache=False)
    return out.logits, out.hidden_states[-1]


def _answer_only(batch: dict, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B,A], mask [B,A]) of each row's answer tokens (labels != -100), right-padded."""
    rows = [batch["input_ids"][i][batch["labels"][i] != IGNORE_INDEX] for i in range(len(batch["input_ids"]))]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=batch["input_ids"].device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


def _last_answer_position(labels: torch.Tensor) -> torch.Tensor:
    """Index of each row's final target token [B]."""
    positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    return torch.where(labels != IGNORE_INDEX, positions, -1).amax(dim=1)


def _swap_answers(batch: dict, donors: torch.Tensor, pad_id: int) -> dict:
    """Rows of (prompt of row i, answer of row donors[i]), right-padded; labels mark the answers."""
    ids, labels = [], []
    for i, j in enumerate(donors.tolist()):
        start = int((batch["labels"][i] != IGNORE_INDEX).nonzero()[0])
        answer = batch["input_ids"][j][batch["labels"][j] != IGNORE_INDEX]
        ids.append(torch.cat([batch["input_ids"][i][:start], answer]))
        labels.append(torch.cat([torch.full((start,), IGNORE_INDEX, device=answer.device), answer]))
    width = max(len(r) for r in ids)
    out = {"input_ids": torch.full((len(ids), width), pad_id, dtype=torch.long, device=answer.device)}
    out["labels"] = torch.full_like(out["input_ids"], IGNORE_INDEX)
    out["attention_mask"] = torch.zeros_like(out["input_ids"])
    for i, (r, lab) in enumerate(zip(ids, labels)):
        out["input_ids"][i, :len(r)], out["labels"][i, :len(r)], out["attention_mask"][i, :len(r)] = r, lab, 1
    return out


def pretraining_losses(vlm: ComposedVLM, heads: PretrainHeads, batch: dict, weights: dict[str, float], *,
                       pad_id: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """(Σ weights · losses, {loss name: value}) for one micro-batch; only losses with a nonzero weight run."""
    features = batch.get("image_features")
    if features is None:
        features = vlm.tower(batch["pixel_values"])
    n = batch["input_ids"].shape[0]
    if features.shape[0] != n:
        raise PolmError(f"ITC / ITM need exactly one image per example, the batch has {features.shape[0]} images "
                        f"for {n} examples", where="objectives")
    losses: dict[str, torch.Tensor] = {}
    logits, hidden = _last_hidden(vlm, batch, features)
    targets = causal_targets(batch["labels"])
    if weights.get("itg", 0):
        count = int((targets != IGNORE_INDEX).sum())
        losses["itg"] = -token_logprobs(logits, targets).sum() / max(count, 1)
    if weights.get("itc", 0) or weights.get("itm", 0):
        if n < 2:
            raise PolmError("ITC / ITM need at least 2 examples per micro-batch", where="train.micro_batch_size")
        image_emb = vlm.image_tokens(image_features=features).mean(dim=1)
        ans_ids, ans_mask = _answer_only(batch, pad_id)
        text_hidden = vlm.lm(input_ids=ans_ids, attention_mask=ans_mask, output_hidden_states=True,
                             use_cache=False).hidden_states[-1]
        text_emb = (text_hidden * ans_mask[..., None]).sum(1) / ans_mask.sum(1, keepdim=True)
        losses["itc"] = itc_loss(image_emb, text_emb, heads.logit_scale)
        if weights.get("itm", 0):
            same = (ans_ids[:, None, :] == ans_ids[None, :, :]).all(-1) & (ans_mask[:, None] == ans_mask[None]).all(-1)
            losses["itm"] = _itm(vlm, heads, batch, features, hidden, itc_similarity(image_emb, text_emb), same,
                                 pad_id, generator)
    total = mix_losses(losses, weights)
    return total, {k: float(v.detach()) for k, v in losses.items()}


def _itm(vlm, heads, batch, features, hidden, sim, same, pad_id, generator) -> torch.Tensor:
    has_negative = ~(same | torch.eye(len(same), dtype=torch.bool, device=same.device)).all(dim=1)
    if not bool(has_negative.all()):
        return hidden.new_zeros(())
    rows = torch.arange(len(same), device=same.device)
    neg_text, neg_image = hard_negatives(sim.detach(), same=same, generator=generator)
    swapped = _swap_answers(batch, neg_text, pad_id)            # image i, prompt i, another answer
    _, h_text = _last_hidden(vlm, swapped, features)
    _, h_image = _last_hidden(vlm, batch, features[neg_image])  # another image, prompt and answer i
    logits, match = [], []
    for h, b, label in ((hidden, batch, 1), (h_text, swapped, 0), (h_image, batch, 0)):
        logits.append(heads.itm_head(h[rows, _last_answer_position(b["labels"])]))
        match.append(torch.full((len(rows),), label, dtype=torch.long, device=h.device))
    return itm_loss(torch.cat(logits), torch.cat(match))
