"""What evaluation asks of a VLM, for both families: encode a record, collate, generate, score.

`ComposedRunner` wraps a polm ComposedVLM (polm.vlm.collate encodes, image tokens spliced into the
LM's embeddings); `TransformersRunner` wraps an `AutoModelForImageTextToText` and its processor
(polm.vlm.hf encodes). Both give the new tokens of a greedy continuation and the logits of a batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from polm.data.templating import end_of_turn_token
from polm.ops.logprobs import IGNORE_INDEX, token_logprobs


def end_token_id(tokenizer) -> int:
    """The id generation stops at: the chat template's end-of-turn token, else eos."""
    end = end_of_turn_token(tokenizer, chat=True) if getattr(tokenizer, "chat_template", None) else None
    return tokenizer.convert_tokens_to_ids(end) if end else tokenizer.eos_token_id


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


class ComposedRunner:
    def __init__(self, vlm, tokenizer, image_input: Callable):
        self.vlm, self.tokenizer, self.image_input = vlm, tokenizer, image_input
        self.end_id, self.pad_id = end_token_id(tokenizer), tokenizer.pad_token_id

    def eval(self) -> None:
        self.vlm.eval()

    def encode(self, record: dict, *, max_length: int, generation_prompt: bool = False) -> dict | None:
        from polm.vlm.collate import encode_image_record

        return encode_image_record(record, self.tokenizer, self.vlm.spec.tokens_per_image, max_length=max_length,
                                   generation_prompt=generation_prompt)

    def collate(self, examples: list[dict], *, left_pad: bool = False) -> dict:
        from polm.vlm.collate import vlm_collate

        batch = vlm_collate(examples, self.pad_id, self.image_input, left_pad=left_pad)
        return _to(batch, next(self.vlm.lm.parameters()).device)

    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        return self.vlm.generate(batch["input_ids"], batch["attention_mask"], pixel_values=batch.get("pixel_values"),
                                 image_features=batch.get("image_features"), max_new_tokens=max_new_tokens,
                                 eos_token_id=self.end_id, pad_token_id=self.pad_id)

    def logits(self, batch: dict) -> torch.Tensor:
        return self.vlm(batch["input_ids"], pixel_values=batch.get("pixel_values"),
                        image_features=batch.get("image_features"), attention_mask=batch["attention_mask"]).logits

    @torch.no_grad()
    def score_shared_prefix(self, examples: list[dict]) -> torch.Tensor:
        """Σ log p over the target tokens of each example [n], for examples (one record, one answer each)
        that share their images and a token prefix holding every image and no target: the prefix runs
        once, its KV cache is repeated n times, and only the n continuations run after it."""
        ids = [ex["input_ids"] for ex in examples]
        first_target = min(next(t for t, lab in enumerate(ex["labels"]) if lab != IGNORE_INDEX) for ex in examples)
        p = next((t for t in range(first_target) if len({row[t] for row in ids}) > 1), first_target)
        device = next(self.vlm.lm.parameters()).device
        prefix = self.collate([{"input_ids": ids[0][:p], "images": examples[0]["images"]}])
        out = self.vlm.lm(inputs_embeds=self.vlm.embed(prefix["input_ids"], prefix.get("pixel_values"),
                                                       prefix.get("image_features")), use_cache=True)
        cache, n = out.past_key_values, len(examples)
        cache.batch_repeat_interleave(n)
        width = max(len(row) - p for row in ids)
        cont = torch.full((n, width), self.pad_id, dtype=torch.long, device=device)
        targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long, device=device)
        mask = torch.zeros((n, p + width), dtype=torch.long, device=device)
        for i, ex in enumerate(examples):
            m = len(ids[i]) - p
            cont[i, :m] = torch.tensor(ids[i][p:])
            targets[i, :m] = torch.tensor(ex["labels"][p:])
            mask[i, :p + m] = 1
        logits = self.vlm.lm(input_ids=cont, attention_mask=mask, past_key_values=cache, use_cache=True).logits
        # the prefix's last position predicts the first continuation token
        logits = torch.cat([out.logits[:, -1:].expand(n, -1, -1), logits[:, :-1]], dim=1)
        return token_logprobs(logits, targets).sum(-1).cpu()


class TransformersRunner:
    def __init__(self, model, processor):
        from polm.vlm.hf import image_token_id

        self.model, self.processor, self.tokenizer = model, processor, processor.tokenizer
        self.image_token = image_token_id(model, processor)
        self.end_id = end_token_id(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def eval(self) -> None:
        self.model.eval()

    def encode(self, record: dict, *, max_length: int, generation_prompt: bool = False) -> dict | None:
        from polm.vlm.hf import encode_hf_record

        return encode_hf_record(record, self.processor, self.image_token, max_length=max_length,
                                generation_prompt=generation_prompt)

    def collate(self, examples: list[dict], *, left_pad: bool = False) -> dict:
        from polm.vlm.hf import hf_collate

        return _to(hf_collate(examples, self.pad_id, left_pad=left_pad), next(self.model.parameters()).device)

    def generate(self, batch: dict, max_new_tokens: int) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                  eos_token_id=self.end_id, pad_token_id=self.pad_id)
        return out[:, batch["input_ids"].shape[1]:]

    def logits(self, batch: dict) -> torch.Tensor:
        return self.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
