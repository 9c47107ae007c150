"""Image records -> token ids with image placeholders + answer-only labels -> padded batches.

The chat template decides where images go: the conversation (with IMAGE_MARKER where each image part
was) is rendered by the tokenizer's template, the text is split at the markers, each piece tokenized,
and `tokens_per_image` IMAGE_TOKEN_ID positions (label -100) put between the pieces (LLaVA's
`tokenizer_image_token`). Labels are the assistant turns' tokens only (polm.data.templating's spans).
A length limit that would cut into image tokens is refused with one message, never silently applied.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from polm.data.templating import IGNORE_INDEX, _assistant_span, _render
from polm.errors import PolmError
from polm.vlm.data import IMAGE_MARKER, record_images
from polm.vlm.model import IMAGE_TOKEN_ID


def render_chat(tokenizer: Any, messages: list[dict], *, generation_prompt: bool = False) -> tuple[str, list]:
    """(text, assistant character spans) of messages through the chat template (or plain text without one).

    Plain text (no template): turns joined by newlines, spans = assistant contents + eos.
    """
    if getattr(tokenizer, "chat_template", None):
        text = _render(tokenizer, messages, generation_prompt=generation_prompt)
        spans = [] if generation_prompt else [_assistant_span(tokenizer, messages, i, text)
                                              for i, m in enumerate(messages) if m["role"] == "assistant"]
        return text, spans
    text, spans = "", []
    for m in messages:
        if m["role"] == "assistant":
            start = len(text)
            text += m["content"] + tokenizer.eos_token
            spans.append((start, len(text)))
        else:
            text += m["content"] + "\n"
    return text, spans


def tokenize_with_images(tokenizer: Any, text: str, spans: list, tokens_per_image: int) -> tuple[list[int], list[int]]:
    """(ids, labels): text pieces between markers tokenized, image placeholders between them."""
    ids, labels, offset = [], [], 0
    pieces = text.split(IMAGE_MARKER)
    for k, piece in enumerate(pieces):
        if piece:
            enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            for tok, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]):
                ids.append(tok)
                speech = any(offset + s < b and offset + e > a for a, b in spans)
                labels.append(tok if speech else IGNORE_INDEX)
        offset += len(piece)
        if k < len(pieces) - 1:
            ids += [IMAGE_TOKEN_ID] * tokens_per_image
            labels += [IGNORE_INDEX] * tokens_per_image
            offset += len(IMAGE_MARKER)
    return ids, labels


def fit_length(ids: list[int], labels: list[int], max_length: int, where: str | None) -> tuple[list[int], list[int]]:
    """Cut to `max_length` tokens from the right, unless that would cut an image's tokens (refused)."""
    if len(ids) <= max_length:
        return ids, labels
    image_positions = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_ID]
    if image_positions and image_positions[-1] >= max_length:
        raise PolmError(f"the example is {len(ids)} tokens and max_length={max_length} would cut its image tokens "
                        f"(they end at position {image_positions[-1] + 1})", where=where,
                        fix=f"Raise data.max_length to at least {len(ids)} (or shorten the text, or use fewer image "
                            "tokens per image, e.g. the pixel_shuffle or resampler projector).")
    return ids[:max_length], labels[:max_length]


def encode_image_record(record: dict, tokenizer: Any, tokens_per_image: int, *, max_length: int,
                        generation_prompt: bool = False) -> dict | None:
    """{"input_ids", "labels", "images", "where"} of a normalized record, or None when truncation left no
    target. With `generation_prompt` (evaluation), the text ends with the assistant header and has no labels."""
    where = record.get("where")
    n_markers = sum(m["content"].count(IMAGE_MARKER) for m in record["messages"])
    if n_markers != len(record["images"]):
        raise PolmError(f"the record has {len(record['images'])} images but {n_markers} image places", where=where)
    text, spans = render_chat(tokenizer, record["messages"], generation_prompt=generation_prompt)
    ids, labels = tokenize_with_images(tokenizer, text, spans, tokens_per_image)
    ids, labels = fit_length(ids, labels, max_length, where)
    if not generation_prompt and all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return {"input_ids": ids, "labels": labels, "images": record_images(record), "where": where}


def encode_image_records(records: list[dict], tokenizer: Any, tokens_per_image: int, *,
                         max_length: int) -> tuple[list[dict], dict[str, int]]:
    """`encode_image_record` over records; counts of kept and of dropped-without-target examples."""
    out, dropped = [], 0
    for record in records:
        example = encode_image_record(record, tokenizer, tokens_per_image, max_length=max_length)
        if example is None:
            dropped += 1
        else:
            out.append(example)
    return out, {"kept": len(out), "dropped_no_target": dropped,
                 "images": sum(len(e["images"]) for e in out)}


def vlm_collate(examples: list[dict], pad_id: int, image_input: Callable[[list[np.ndarray]], dict[str, torch.Tensor]],
                *, left_pad: bool = False) -> dict[str, torch.Tensor]:
    """Pad to the longest example -> input_ids, attention_mask, labels [B,T] + the images' tensors.

    `image_input(images)` gives {"image_features": [n,N,D]} (a frozen tower's cached features) or
    {"pixel_values": [n,3,S,S]}; images are in example order, then position order. `left_pad` for generation.
    """
    width = max(len(ex["input_ids"]) for ex in examples)
    batch = {key: torch.full((len(examples), width), fill, dtype=torch.long)
             for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX))}
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        cols = slice(width - n, width) if left_pad else slice(0, n)
        batch["input_ids"][row, cols] = torch.tensor(ex["input_ids"])
        batch["attention_mask"][row, cols] = 1
        if "labels" in ex:
            batch["labels"][row, cols] = torch.tensor(ex["labels"])
    images = [img for ex in examples for img in ex["images"]]
    if images:
        batch.update(image_input(images))
    return batch
