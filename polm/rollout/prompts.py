"""RL prompts: records with a 'prompt' (string) or 'messages' (ending in a user turn), formatted
(`polm.data.templating`) and tokenized once, with those too long for the rollout counted and dropped."""

from __future__ import annotations

from polm.data.loaders import load_records
from polm.data.templating import format_prompt, prompt_of
from polm.errors import PolmError
from polm.io import records_sha256
from polm.rewards import RewardSet
from polm.rollout.settings import PromptData


def prepare_prompts(data: PromptData, tokenizer, rewards: RewardSet, recipe: str = "grpo") -> tuple[list[dict], dict]:
    """(records + 'prompt_ids', data info for the lineage); every record must carry what `rewards` read."""
    loaded = load_records(data.train, require_targets=False)
    rewards.check_records(loaded.records, data.train)
    prompts, too_long = [], 0
    for i, rec in enumerate(loaded.records):
        prompt = prompt_of(rec, f"{data.train}: record {i + 1}")
        if data.prompt_suffix and isinstance(prompt, str):
            prompt = f"{prompt}\n{data.prompt_suffix}"
        text = format_prompt(tokenizer, prompt, data.chat)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > data.max_prompt_length:
            too_long += 1
            continue
        prompts.append({**rec, "prompt_ids": ids})
    if not prompts:
        raise PolmError(f"every prompt of '{data.train}' is longer than data.max_prompt_length="
                        f"{data.max_prompt_length} tokens", fix="Raise data.max_prompt_length.")
    if too_long:
        print(f"polm {recipe}: skipped {too_long} prompts longer than {data.max_prompt_length} tokens")
    return prompts, {"train": data.train, "train_sha256": records_sha256(loaded.records),
                     "prompts": len(prompts), "skipped_too_long": too_long}
