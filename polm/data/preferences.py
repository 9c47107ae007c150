"""Preference records: paired (`prompt`, `chosen`, `rejected`) for DPO-style losses and reward models,
unpaired (`prompt`, `completion`, `label`) for KTO; validation that names file:line and field, and
encoding with labels on the completion only (the prompt's tokens never enter the loss).

A prompt is a string or a list of chat turns; a completion is a string or a list with one assistant
turn. TRL's implicit-prompt form (`chosen`/`rejected` as whole conversations sharing their first
turns) is accepted too: the shared turns become the prompt.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from polm.data.loaders import LoadedData, _items
from polm.data.records import validate_record
from polm.data.templating import IGNORE_INDEX, encode_chat, encode_example
from polm.errors import PolmError


@dataclass
class PreferenceStats:
    kept: int = 0
    prompt_too_long: int = 0        # the prompt alone fills max_length: no completion token would be seen
    truncated: int = 0              # a completion was cut at max_length
    reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{self.kept} kept"]
        if self.prompt_too_long:
            parts.append(f"{self.prompt_too_long} skipped: prompt longer than data.max_length")
        if self.truncated:
            parts.append(f"{self.truncated} with a completion truncated to data.max_length")
        return ", ".join(parts)


def _as_turns(value: Any, key: str, where: str) -> list[dict]:
    """A prompt as chat turns (a string becomes one user turn), validated like SFT messages."""
    turns = [{"role": "user", "content": value}] if isinstance(value, str) else value
    validate_record({"messages": turns}, f"{where} (field '{key}')", require_targets=False)
    return turns


def _completion_text(value: Any, key: str, where: str) -> str:
    """A completion: a non-empty string, or a list holding exactly one assistant turn."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and value[0].get("role") == "assistant":
        value = value[0].get("content")
    if not isinstance(value, str):
        raise PolmError(f"field '{key}' must be a string or one assistant turn, got {type(value).__name__}",
                        where=where, fix=f"Write '{key}' as the completion's text.")
    if not value.strip():
        raise PolmError(f"field '{key}' is empty", where=where,
                        fix="An empty completion gives the loss nothing to compare; drop the record.")
    return value


def _split_implicit_prompt(record: dict, where: str) -> dict:
    """{'chosen': [turns..., a], 'rejected': [turns..., b]} -> prompt = the shared turns."""
    chosen, rejected = record["chosen"], record["rejected"]
    if not (isinstance(chosen, list) and isinstance(rejected, list) and chosen and rejected):
        raise PolmError("field 'prompt' is missing", where=where,
                        fix="Add a 'prompt' (string or chat turns), or give chosen/rejected as whole conversations.")
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0 or len(chosen) != shared + 1 or len(rejected) != shared + 1:
        raise PolmError("chosen and rejected conversations must share every turn but the last", where=where,
                        fix="Put the shared turns in 'prompt' and only the final replies in chosen/rejected.")
    return {**record, "prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


def validate_pair(record: Any, where: str) -> dict:
    """Check one paired record; return {'prompt': turns, 'chosen': str, 'rejected': str} or raise PolmError."""
    if not isinstance(record, dict):
        raise PolmError("a preference record must be a JSON object", where=where,
                        fix='Write {"prompt": ..., "chosen": ..., "rejected": ...}.')
    for key in ("chosen", "rejected"):
        if key not in record:
            hint = " (a 'completion' + 'label' record is KTO data: use loss=kto)" if "label" in record else ""
            raise PolmError(f"field '{key}' is missing{hint}", where=where,
                            fix='Write {"prompt": ..., "chosen": ..., "rejected": ...}.')
    if "prompt" not in record:
        record = _split_implicit_prompt(record, where)
    prompt = _as_turns(record["prompt"], "prompt", where)
    chosen = _completion_text(record["chosen"], "chosen", where)
    rejected = _completion_text(record["rejected"], "rejected", where)
    if chosen.strip() == rejected.strip():
        raise PolmError("fields 'chosen' and 'rejected' are identical, so the pair prefers nothing", where=where,
                        fix="Drop the pair (or pass --skip-invalid / data.skip_invalid=true to count and skip such pairs).")
    pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if "margin" in record:   # reward-model margin (Llama 2): how much better chosen is
        if not isinstance(record["margin"], (int, float)) or isinstance(record["margin"], bool):
            raise PolmError(f"field 'margin' must be a number, got {record['margin']!r}", where=where,
                            fix="Write the preference strength as a number, or drop the field.")
        pair["margin"] = float(record["margin"])
    return pair


def validate_unpaired(record: Any, where: str) -> dict:
    """Check one KTO record; return {'prompt': turns, 'completion': str, 'label': bool} or raise PolmError."""
    if not isinstance(record, dict) or "completion" not in record or "label" not in record:
        raise PolmError("a KTO record needs 'prompt', 'completion' and 'label' (true = desirable)", where=where,
                        fix='Write {"prompt": ..., "completion": ..., "label": true}, or give chosen/rejected pairs.')
    label = record["label"]
    if not isinstance(label, bool):
        raise PolmError(f"field 'label' must be true or false, got {label!r}", where=where,
                        fix="Write label: true for a desirable completion, false for an undesirable one.")
    if "prompt" not in record:
        raise PolmError("field 'prompt' is missing", where=where, fix="Add the prompt the completion answers.")
    return {"prompt": _as_turns(record["prompt"], "prompt", where),
            "completion": _completion_text(record["completion"], "completion", where), "label": label}


def load_preferences(ref: str, *, unpaired: bool = False, skip_invalid: bool = False) -> LoadedData:
    """Read and validate paired records (or, with `unpaired`, KTO records; pairs then become one
    desirable and one undesirable example each). Bad records raise, or are counted with `skip_invalid`."""
    loaded = LoadedData(records=[], source=ref)
    for where, item in _items(ref):
        try:
            if isinstance(item, PolmError):
                raise item
            if unpaired and isinstance(item, dict) and "label" in item:
                loaded.records.append(validate_unpaired(item, where))
            elif unpaired:
                pair = validate_pair(item, where)
                loaded.records += [{"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
                                   {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False}]
            else:
                loaded.records.append(validate_pair(item, where))
        except PolmError as err:
            if not skip_invalid:
                raise
            loaded.skipped.append((where, err.what))
    if not loaded.records:
        raise PolmError(f"no valid preference record in '{ref}'" if loaded.skipped else f"data source '{ref}' is empty",
                        fix="Check the file; records need prompt + chosen + rejected (or completion + label).")
    return loaded


def encode_completion(prompt: list[dict], completion: str, tokenizer: Any, chat: bool) -> tuple[list[int], list[int], int]:
    """(ids, labels, prompt length) of prompt + completion; labels only on the completion (+ end token).

    Chat: the template renders prompt + one assistant turn, and only the LAST assistant turn keeps
    its labels (earlier assistant turns are part of the prompt). Plain: prompt text + completion + eos.
    """
    if chat and getattr(tokenizer, "chat_template", None):
        ids, labels = encode_chat([*prompt, {"role": "assistant", "content": completion}], tokenizer)
        last = max(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
        start = last
        while start > 0 and labels[start - 1] != IGNORE_INDEX:
            start -= 1
        labels = [IGNORE_INDEX] * start + labels[start:]
    else:
        text = "\n".join(turn["content"] for turn in prompt)
        encoded = encode_example({"prompt": text, "completion": completion}, tokenizer, max_length=1 << 30, chat=False)
        ids, labels = encoded["input_ids"], encoded["labels"]
        start = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    return ids, labels, start


def _fit(ids: list[int], labels: list[int], prompt_len: int, max_length: int, stats: PreferenceStats) -> dict | None:
    """Cut at max_length; None when the prompt leaves fewer than one completion token to predict."""
    if prompt_len >= max_length - 1:
        return None
    if len(ids) > max_length:
        stats.truncated += 1
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels, "prompt_len": prompt_len}


def encode_pairs(records: list[dict], tokenizer: Any, *, max_length: int, chat: bool = True) -> tuple[list[dict], PreferenceStats]:
    """Validated pairs -> [{'chosen': example, 'rejected': example, 'index': i}], counting what was skipped."""
    stats, out = PreferenceStats(), []
    for i, record in enumerate(records):
        sides = [_fit(*encode_completion(record["prompt"], record[key], tokenizer, chat), max_length, stats)
                 for key in ("chosen", "rejected")]
        if sides[0] is None or sides[1] is None:
            stats.prompt_too_long += 1
            continue
        out.append({"chosen": sides[0], "rejected": sides[1], "index": i})
    stats.kept = len(out)
    return out, stats


def encode_unpaired(records: list[dict], tokenizer: Any, *, max_length: int, chat: bool = True) -> tuple[list[dict], PreferenceStats]:
    """Validated KTO records -> [{'input_ids', 'labels', 'prompt_len', 'desirable', 'index'}]."""
    stats, out = PreferenceStats(), []
    for i, record in enumerate(records):
        example = _fit(*encode_completion(record["prompt"], record["completion"], tokenizer, chat), max_length, stats)
        if example is None:
            stats.prompt_too_long += 1
            continue
        out.append({**example, "desirable": record["label"], "index": i})
    stats.kept = len(out)
    return out, stats


def mismatched(examples: list[dict], max_length: int) -> list[dict]:
    """KTO's KL samples: prompt i with the completion of example (i+1) mod n, as in Ethayarajh et al.
    A micro-batch of one has no other completion, so it pairs with itself (its KL estimate is then 0)."""
    out = []
    for i, ex in enumerate(examples):
        other = examples[(i + 1) % len(examples)]
        k, j = ex["prompt_len"], other["prompt_len"]
        ids = (ex["input_ids"][:k] + other["input_ids"][j:])[:max_length]
        labels = ([IGNORE_INDEX] * k + other["labels"][j:])[:max_length]
        out.append({"input_ids": ids, "labels": labels})
    return out


def split_by_prompt(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held_out) with about `fraction` of the records held out, whole prompts at a time: every pair
    (or KTO example) of one prompt lands on the same side, so held-out accuracy is measured on prompts
    the model never trained on. At least one prompt is held out when there are two or more."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(json.dumps(record["prompt"], sort_keys=True), []).append(i)
    keys = list(groups)
    if fraction <= 0 or len(keys) < 2:
        return list(records), []
    random.Random(seed).shuffle(keys)
    target, held = max(1, round(len(records) * fraction)), set()
    for key in keys[:-1]:                       # never hold out every prompt
        if len(held) >= target:
            break
        held.update(groups[key])
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])
