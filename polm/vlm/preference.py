"""Image-conditioned preference pairs for DPO-family losses on a composed VLM.

A pair is {"image": path|array, "prompt", "chosen", "rejected"}, or {"messages": [prompt turns with
image parts], "chosen", "rejected"}. An embedded labelled source (`builtin:fashion-mnist?...`) gives
label pairs: chosen = the true class, rejected = another class drawn uniformly (seeded). Both answers are encoded with the same images and prompt
(polm.vlm.collate), and a batch of n pairs is 2n rows: the n chosen, then the n rejected. Sequence
log-probs are Σ log p over each answer's tokens (prompt and image positions excluded).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from polm.errors import PolmError
from polm.ops.logprobs import IGNORE_INDEX, causal_targets, token_logprobs
from polm.vlm.collate import encode_image_record, vlm_collate
from polm.vlm.data import normalize_record, record_images
from polm.vlm.model import ComposedVLM


def normalize_pair(record: Any, where: str, base: Path | None = None) -> dict:
    """-> {"chosen": normalized record, "rejected": normalized record, "where"} (images loaded once)."""
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("chosen", "rejected")):
        raise PolmError("a preference pair needs 'chosen' and 'rejected' strings", where=where,
                        fix='Write {"image": "img.png", "prompt": "...", "chosen": "...", "rejected": "..."}.')
    if record["chosen"].strip() == record["rejected"].strip():
        raise PolmError("'chosen' and 'rejected' are the same answer, so the pair teaches nothing", where=where)
    rest = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    prompt = normalize_record(rest, where, base)
    images = record_images({**prompt, "where": where})
    sides = {side: {**prompt, "images": images, "where": where,
                    "messages": [*prompt["messages"], {"role": "assistant", "content": record[side]}]}
             for side in ("chosen", "rejected")}
    return {**sides, "where": where}


def label_pairs(records: list[dict], seed: int = 0) -> list[dict]:
    """Pairs from labelled records: the true class chosen, a uniformly drawn other class rejected."""
    import random

    classes = sorted({r["label"] for r in records})
    if len(classes) < 2:
        raise PolmError("label pairs need at least two classes in the data", where=records[0].get("where"))
    rng = random.Random(seed)
    pairs = []
    for r in records:
        wrong = rng.choice([c for c in classes if c != r["label"]])
        prompt = [m for m in r["messages"] if m["role"] != "assistant"]
        sides = {side: {**r, "messages": [*prompt, {"role": "assistant", "content": answer}]}
                 for side, answer in (("chosen", r["label"]), ("rejected", wrong))}
        pairs.append({**sides, "where": r.get("where")})
    return pairs


def load_image_pairs(ref: str, seed: int = 0) -> list[dict]:
    """Pairs of a .jsonl/.json file, or label pairs of an embedded labelled source (`builtin:...`)."""
    from polm.data.loaders import read_items
    from polm.vlm.data import load_image_records

    if ref.startswith("builtin:"):
        return label_pairs([{**r, "images": record_images(r)} for r in load_image_records(ref)], seed)
    pairs = []
    for where, item in read_items(ref):
        if isinstance(item, PolmError):
            raise item
        pairs.append(normalize_pair(item, where, base=Path(ref).parent))
    if not pairs:
        raise PolmError(f"data source '{ref}' is empty", fix="Check that the file holds preference pairs.")
    return pairs


def encode_pair(pair: dict, tokenizer, tokens_per_image: int, *, max_length: int) -> dict | None:
    """{"chosen": example, "rejected": example}, or None when truncation left either answer without a token."""
    sides = {s: encode_image_record(pair[s], tokenizer, tokens_per_image, max_length=max_length)
             for s in ("chosen", "rejected")}
    return sides if all(sides.values()) else None


def pair_collate(examples: list[dict], pad_id: int, image_input: Callable) -> dict[str, torch.Tensor]:
    """n pairs -> 2n padded rows (chosen then rejected) + image tensors; `ref_logps` [2n] when precomputed."""
    rows = [ex["chosen"] for ex in examples] + [ex["rejected"] for ex in examples]
    batch = vlm_collate(rows, pad_id, image_input)
    if all("ref" in ex for ex in examples):
        batch["ref_logps"] = torch.tensor([ex["ref"][0] for ex in examples] + [ex["ref"][1] for ex in examples])
    return batch


def sequence_logps(vlm: ComposedVLM, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ log p over each row's answer tokens [R], answer tokens per row [R]) under the VLM."""
    logits = vlm(batch["input_ids"], pixel_values=batch.get("pixel_values"),
                 image_features=batch.get("image_features"), attention_mask=batch["attention_mask"]).logits
    targets = causal_targets(batch["labels"])
    per_token = token_logprobs(logits, targets)
    return per_token.sum(-1), (targets != IGNORE_INDEX).sum(-1)
