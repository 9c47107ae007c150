"""Records -> token ids + label masks: chat templating with loss only on what the model must say.

Labels follow the Hugging Face convention: `labels[t] = input_ids[t]` on target tokens and -100
elsewhere, NOT shifted (the loss shifts once, in polm.ops). Assistant spans of a chat are found by
rendering conversation prefixes and mapping characters to tokens with the fast tokenizer's offsets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from polm.data.records import detect_format
from polm.errors import PolmError

IGNORE_INDEX = -100


Prompt = str | list[dict]


def prompt_of(record: dict, where: str | None = None) -> Prompt:
    """The prompt of a record, for every caller that generates or scores from it (RL, rewards, eval,
    `polm generate`): its `prompt` string, or its `messages` up to (not including) a final assistant turn."""
    if isinstance(record.get("prompt"), str):
        return record["prompt"]
    messages = record.get("messages")
    if isinstance(messages, list) and messages:
        return messages[:-1] if messages[-1].get("role") == "assistant" else messages
    raise PolmError("a record has neither a 'prompt' string nor a 'messages' list", where=where,
                    fix="Give each record a 'prompt' (or 'messages'); answers and tests go in other fields.")


def format_prompt(tokenizer: Any, prompt: Prompt, chat: bool) -> str:
    """A chat message list or a user string -> the text the model continues (the tokenizer's chat
    template with the generation prompt when `chat` and it has one, else plain text)."""
    if chat and getattr(tokenizer, "chat_template", None):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        return "\n".join(m["content"] for m in prompt)
    return prompt


def with_suffix(prompt: Prompt, suffix: str) -> Prompt:
    """The prompt with `suffix` on a new line: appended to a string, or to the last user turn of chat turns."""
    if isinstance(prompt, str):
        return f"{prompt}\n{suffix}"
    turns = [dict(t) for t in prompt]
    last_user = max(i for i, t in enumerate(turns) if t.get("role") == "user")
    turns[last_user]["content"] = f"{turns[last_user]['content']}\n{suffix}"
    return turns


PROMPT_FORMAT_FILE = "polm_prompt.json"


@dataclass(frozen=True)
class TrainedPromptFormat:
    """The prompt format a model was trained with, written to `final/polm_prompt.json` and read back by
    `polm generate`, `polm chat` and `polm eval`.

    chat: prompts went through the tokenizer's chat template (else plain text). suffix: appended on a
    new line to the (last user turn of the) prompt. system: a system turn put first. stop: the strings
    training targets ended with (the end-of-turn token). end_of_turn: the token closing an assistant
    turn (chat) or the eos token (plain), the token a generation should stop at.
    """

    chat: bool
    suffix: str = ""
    system: str | None = None
    stop: tuple[str, ...] = ()
    end_of_turn: str | None = None

    def wrap(self, prompt: Prompt, *, suffix: bool = True) -> Prompt:
        """The prompt as training wrote it: system turn first (none is there yet), then the suffix."""
        if self.system and not (isinstance(prompt, list) and prompt and prompt[0].get("role") == "system"):
            turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            prompt = [{"role": "system", "content": self.system}, *turns]
        return with_suffix(prompt, self.suffix) if suffix and self.suffix else prompt

    def render(self, tokenizer: Any, prompt: Prompt, *, suffix: bool = True) -> str:
        """The text the model continues: `wrap`, then the chat template (or plain text)."""
        return format_prompt(tokenizer, self.wrap(prompt, suffix=suffix), self.chat)

    def wrap_record(self, record: dict) -> dict:
        """A training record with its prompt written in this format (plain `text` records unchanged)."""
        if "messages" in record:
            *turns, last = record["messages"]
            return {**record, "messages": [*self.wrap(turns), last]} if last.get("role") == "assistant" else record
        if "prompt" not in record or not (self.suffix or self.system):
            return record
        prompt = self.wrap(record["prompt"])
        if isinstance(prompt, list) and self.chat:
            rest = {k: v for k, v in record.items() if k not in ("prompt", "completion")}
            return {**rest, "messages": [*prompt, {"role": "assistant", "content": record["completion"]}]}
        return {**record, "prompt": format_prompt(None, prompt, False) if isinstance(prompt, list) else prompt}

    def describe(self) -> str:
        """One line: what a caller applying this format does to a prompt."""
        parts = ["chat template" if self.chat else "plain text"]
        parts += [f"system prompt {self.system!r}"] if self.system else []
        parts += [f"suffix {self.suffix!r}"] if self.suffix else []
        parts += [f"stop at {', '.join(map(repr, self.stop))}"] if self.stop else []
        return ", ".join(parts)

    def card_section(self) -> str:
        """The model card's 'Prompt format' section."""
        return (f"\n## Prompt format\n\nTrained with: {self.describe()}. Recorded in `{PROMPT_FORMAT_FILE}`; "
                "`polm generate`, `polm chat` and `polm eval` apply it (`--no-prompt-format` to turn it off).\n\n"
                f"```json\n{self.to_json()}```\n")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "stop": list(self.stop)}, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def read(cls, directory: str | Path) -> TrainedPromptFormat | None:
        """The format recorded in `directory/polm_prompt.json`, or None when the directory has none."""
        path = Path(directory) / PROMPT_FORMAT_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(chat=bool(data["chat"]), suffix=data.get("suffix") or "", system=data.get("system"),
                       stop=tuple(data.get("stop") or ()), end_of_turn=data.get("end_of_turn"))
        except (ValueError, KeyError, TypeError) as err:
            raise PolmError(f"the recorded prompt format is unreadable ({err})", where=str(path),
                            fix=f"Fix or delete {PROMPT_FORMAT_FILE} (it is rewritten by the next training run).") from None


def trained_prompt_format(tokenizer: Any, *, chat: bool, suffix: str = "",
                          system: str | None = None) -> TrainedPromptFormat:
    """The format a recipe trains with: `chat` only when the tokenizer has a template (as encoding does);
    the end-of-turn token is what training targets end with (`end_of_turn_token`)."""
    chat = bool(chat and getattr(tokenizer, "chat_template", None))
    end = end_of_turn_token(tokenizer, chat)
    return TrainedPromptFormat(chat=chat, suffix=suffix, system=system or None, stop=(end,) if end else (),
                               end_of_turn=end)


def end_of_turn_token(tokenizer: Any, chat: bool) -> str | None:
    """The token that closes an assistant turn: the first token the chat template writes after the
    assistant's content (`<|im_end|>` for ChatML), or the eos token for plain text (encoding appends it)."""
    if not chat:
        return tokenizer.eos_token
    marker = "polm-end-of-turn-marker"
    full = _render(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
                   generation_prompt=False)
    tail = full[full.rfind(marker) + len(marker):].strip()
    ids = _ids(tokenizer, tail)
    return tokenizer.decode(ids[:1]) if ids else None


@dataclass
class EncodeStats:
    kept: int = 0
    dropped_too_long: int = 0      # truncation="drop" and longer than max_length
    dropped_no_target: int = 0     # no target token left (after truncation, counted after the shift)
    truncated: int = 0             # cut to max_length (truncation="right")
    target_tokens: int = 0         # Σ over kept examples of labels[1:] != -100 (what the loss sees)
    total_tokens: int = 0          # Σ over kept examples of len(input_ids)


def encode_example(record: dict, tokenizer: Any, *, max_length: int, truncation: Literal["right", "drop"] = "right",
                   chat: bool = True) -> dict | None:
    """{"input_ids": list[int], "labels": list[int]} for one validated record, or None when dropped.

    messages: chat template, targets = every assistant turn's content + end-of-turn token(s).
    prompt_completion: as a user/assistant chat when `chat` and the tokenizer has a template, else
    `prompt + completion + eos` with targets on completion + eos. text: every token + eos.
    """
    ids, labels = _encode_full(record, tokenizer, chat)
    fitted, _ = _fit(ids, labels, max_length, truncation)
    return fitted


def encode_records(records: list[dict], tokenizer: Any, *, max_length: int,
                   truncation: Literal["right", "drop"] = "right", chat: bool = True) -> tuple[list[dict], EncodeStats]:
    """`encode_example` over many records, with counts of what was kept, cut and dropped."""
    stats = EncodeStats()
    out = []
    for record in records:
        ids, labels = _encode_full(record, tokenizer, chat)
        example, outcome = _fit(ids, labels, max_length, truncation)
        if example is None:
            stats.dropped_too_long += outcome == "too_long"
            stats.dropped_no_target += outcome == "no_target"
            continue
        stats.kept += 1
        stats.truncated += outcome == "truncated"
        stats.total_tokens += len(example["input_ids"])
        stats.target_tokens += sum(label != IGNORE_INDEX for label in example["labels"][1:])
        out.append(example)
    return out, stats


def _fit(ids: list[int], labels: list[int], max_length: int, truncation: str) -> tuple[dict | None, str]:
    """Apply the length limit; (example or None, 'kept' | 'truncated' | 'too_long' | 'no_target')."""
    if truncation not in ("right", "drop"):
        raise PolmError(f"truncation must be 'right' or 'drop', got {truncation!r}",
                        fix="Set data.truncation=right (keep the first tokens) or drop (skip long examples).")
    outcome = "kept"
    if len(ids) > max_length:
        if truncation == "drop":
            return None, "too_long"
        ids, labels, outcome = ids[:max_length], labels[:max_length], "truncated"
    # position 0 is never predicted (nothing precedes it), so it does not count as a target
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None, "no_target"
    return {"input_ids": ids, "labels": labels}, outcome


def _encode_full(record: dict, tokenizer: Any, chat: bool) -> tuple[list[int], list[int]]:
    fmt = detect_format(record)
    if fmt == "messages":
        if not getattr(tokenizer, "chat_template", None):
            raise PolmError("chat (messages) records need a tokenizer with a chat template, and this one has none",
                            fix="Use an instruct model's tokenizer, or convert the data to prompt/completion.")
        return encode_chat(record["messages"], tokenizer)
    if fmt == "prompt_completion":
        if chat and getattr(tokenizer, "chat_template", None):
            turns = [{"role": "user", "content": record["prompt"]},
                     {"role": "assistant", "content": record["completion"]}]
            return encode_chat(turns, tokenizer)
        return _encode_plain(record["prompt"], record["completion"], tokenizer)
    if fmt == "text":
        return _encode_plain("", record["text"], tokenizer)
    raise PolmError("record has no known format", fix="Validate records with polm.data.records.validate_record.")


def _encode_plain(prompt: str, target: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    """[bos if the tokenizer adds one] + prompt + target + eos; labels on target + eos only.

    Prompt and target are tokenized apart so the boundary is exact and the prompt's tokens are the
    ones the model will see when asked to generate from it.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise PolmError("the tokenizer has no end-of-sequence token, so the model cannot learn to stop",
                        fix="Set tokenizer.eos_token (e.g. in tokenizer_config.json).")
    prompt_ids = _ids(tokenizer, prompt)
    target_ids = _ids(tokenizer, target)
    if target_ids[-1:] != [eos]:
        target_ids.append(eos)
    if _adds_bos(tokenizer) and (prompt_ids or target_ids)[:1] != [tokenizer.bos_token_id]:
        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
    return prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS token in front when asked for special tokens."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def encode_chat(messages: list[dict], tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids of the rendered chat and labels on assistant turns only.  -> (ids [T], labels [T]).

    The text is tokenized with add_special_tokens=False: the template already writes the BOS it
    wants, and a second one would shift every position the model was tuned on.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise PolmError("locating assistant turns needs a fast (Rust) tokenizer, and this one is slow",
                        fix="Load the tokenizer with use_fast=True (a tokenizer.json file).")
    full = _render(tokenizer, messages, generation_prompt=False)
    spans = [_assistant_span(tokenizer, messages, i, full) for i, m in enumerate(messages) if m["role"] == "assistant"]
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [IGNORE_INDEX] * len(enc["input_ids"])
    for t, (start, end) in enumerate(enc["offset_mapping"]):
        # overlap, not containment: with a header ending in a space ("assistant: "), the first
        # content token " The" starts inside the header, and it is still what the model must say
        if any(start < e and end > s for s, e in spans):
            labels[t] = enc["input_ids"][t]
    return list(enc["input_ids"]), labels


def _assistant_span(tokenizer: Any, messages: list[dict], i: int, full: str) -> tuple[int, int]:
    """Character span [start, end) of assistant turn i in `full`: after its header, through its end token.

    start = len(render(messages[:i], add_generation_prompt=True)), end = len(render(messages[:i+1]))
    without trailing whitespace (the newline after an end-of-turn token is formatting, not speech).
    """
    before = _render(tokenizer, messages[:i], generation_prompt=True)
    through = _render(tokenizer, messages[:i + 1], generation_prompt=False)
    if not (through.startswith(before) and full.startswith(through)):
        raise PolmError(
            f"the tokenizer's chat template renders a conversation prefix differently from the whole "
            f"conversation (at messages[{i}]), so the assistant's tokens cannot be located",
            fix="Use a template whose rendering of the first turns is a prefix of the full rendering "
                "(no content that depends on the last turn), or train on prompt/completion with chat=false.")
    return len(before), len(through.rstrip())


def _render(tokenizer: Any, messages: list[dict], *, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as err:  # jinja raises template-defined errors (e.g. "roles must alternate")
        raise PolmError(f"the chat template cannot render this conversation ({err})",
                        fix="Check the turn order the model's template expects (e.g. user/assistant alternating).") from None
