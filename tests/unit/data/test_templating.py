"""Label masks: loss exactly on what the model must say (assistant turns + end token, completion + eos)."""

from __future__ import annotations

import pytest

from polm.data.templating import IGNORE_INDEX, EncodeStats, encode_example, encode_records
from polm.errors import PolmError

CHAT = {"messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 12 + 7?"},
    {"role": "assistant", "content": "The answer is 19."},
    {"role": "user", "content": "And 5 - 3 - 6?"},
    {"role": "assistant", "content": "Answer: -4"},
]}

# Another layout: one BOS up front, plain-text headers, turns closed by <|endoftext|> with no newline.
BOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|endoftext|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def target_runs(tokenizer, example) -> list[str]:
    """The decoded text of each maximal run of labelled tokens."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != IGNORE_INDEX:
            assert label == token  # labels are input ids, not shifted
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [tokenizer.decode(run) for run in runs]


def test_multi_turn_chat_labels_exactly_the_assistant_turns(tiny_tokenizer):
    example = encode_example(CHAT, tiny_tokenizer, max_length=512)
    assert target_runs(tiny_tokenizer, example) == ["The answer is 19.<|im_end|>", "Answer: -4<|im_end|>"]
    # the ids are the template's rendering tokenized as is: nothing added, no second BOS
    rendered = tiny_tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert example["input_ids"] == tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"]
    masked = [t for t, label in zip(example["input_ids"], example["labels"]) if label == IGNORE_INDEX]
    assert tiny_tokenizer.decode(masked) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n"
        "<|im_start|>assistant\n\n<|im_start|>user\nAnd 5 - 3 - 6?<|im_end|>\n<|im_start|>assistant\n\n")


def test_other_template_layout_with_bos(tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(tiny_tokenizer, "chat_template", BOS_TEMPLATE)
    example = encode_example(CHAT, tiny_tokenizer, max_length=512)
    # "assistant: The" tokenizes as "assistant", ":", " The": the token that starts in the header
    # but carries the first word is a target
    assert target_runs(tiny_tokenizer, example) == [" The answer is 19.<|endoftext|>", " Answer: -4<|endoftext|>"]
    assert example["input_ids"].count(tiny_tokenizer.bos_token_id) == 1
    assert example["input_ids"][0] == tiny_tokenizer.bos_token_id


def test_prompt_completion_as_chat_is_the_same_as_messages(tiny_tokenizer):
    record = {"prompt": "What is 12 + 7?", "completion": "The answer is 19."}
    as_chat = {"messages": [{"role": "user", "content": record["prompt"]},
                            {"role": "assistant", "content": record["completion"]}]}
    example = encode_example(record, tiny_tokenizer, max_length=512)
    assert example == encode_example(as_chat, tiny_tokenizer, max_length=512)
    assert target_runs(tiny_tokenizer, example) == ["The answer is 19.<|im_end|>"]


def test_prompt_completion_plain_labels_completion_and_eos(tiny_tokenizer):
    record = {"prompt": "What is 12 + 7?", "completion": " The answer is 19."}
    example = encode_example(record, tiny_tokenizer, max_length=512, chat=False)
    prompt_ids = tiny_tokenizer("What is 12 + 7?", add_special_tokens=False)["input_ids"]
    completion_ids = tiny_tokenizer(" The answer is 19.", add_special_tokens=False)["input_ids"]
    eos = tiny_tokenizer.eos_token_id
    assert example["input_ids"] == prompt_ids + completion_ids + [eos]
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + completion_ids + [eos]


def test_prompt_completion_without_template_falls_back_to_plain(tiny_tokenizer, monkeypatch):
    record = {"prompt": "Q: 2+2?", "completion": " 4"}
    plain = encode_example(record, tiny_tokenizer, max_length=512, chat=False)
    monkeypatch.setattr(tiny_tokenizer, "chat_template", None)
    assert encode_example(record, tiny_tokenizer, max_length=512, chat=True) == plain
    with pytest.raises(PolmError, match="need a tokenizer with a chat template"):
        encode_example(CHAT, tiny_tokenizer, max_length=512)


def test_text_is_all_targets_plus_eos(tiny_tokenizer):
    example = encode_example({"text": "The quick brown fox."}, tiny_tokenizer, max_length=512)
    ids = tiny_tokenizer("The quick brown fox.", add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert example == {"input_ids": ids, "labels": ids}


def test_a_single_bos_when_the_tokenizer_adds_one():
    from conftest import build_tiny_tokenizer  # tests/ is on sys.path via its conftest
    from tokenizers.processors import TemplateProcessing

    tokenizer = build_tiny_tokenizer()
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    assert tokenizer("hello")["input_ids"][0] == bos
    text = encode_example({"text": "hello world"}, tokenizer, max_length=64)
    already = encode_example({"text": "<|im_start|>hello world"}, tokenizer, max_length=64)
    assert text["input_ids"] == already["input_ids"]
    assert text["input_ids"][:2] == [bos, *tokenizer("hello", add_special_tokens=False)["input_ids"][:1]]
    assert text["labels"][0] == IGNORE_INDEX  # the BOS is context, not text to learn
    tokenizer.chat_template = BOS_TEMPLATE
    chat = encode_example(CHAT, tokenizer, max_length=512)
    assert chat["input_ids"][0] == bos and chat["input_ids"].count(bos) == 1


def test_truncation_right_keeps_the_first_tokens_and_drop_returns_none(tiny_tokenizer):
    full = encode_example(CHAT, tiny_tokenizer, max_length=512)
    n = len(full["input_ids"]) - 5
    cut = encode_example(CHAT, tiny_tokenizer, max_length=n, truncation="right")
    assert cut == {"input_ids": full["input_ids"][:n], "labels": full["labels"][:n]}
    assert encode_example(CHAT, tiny_tokenizer, max_length=n, truncation="drop") is None
    assert encode_example(CHAT, tiny_tokenizer, max_length=len(full["input_ids"]), truncation="drop") == full


def test_no_target_left_after_truncation_returns_none(tiny_tokenizer):
    full = encode_example(CHAT, tiny_tokenizer, max_length=512)
    first_target = next(t for t, label in enumerate(full["labels"]) if label != IGNORE_INDEX)
    assert encode_example(CHAT, tiny_tokenizer, max_length=first_target) is None
    assert encode_example(CHAT, tiny_tokenizer, max_length=first_target + 1) is not None
    # a single text token has nothing before it to predict it from
    assert encode_example({"text": "The quick"}, tiny_tokenizer, max_length=1) is None


def test_encode_records_counts_hand_checked(tiny_tokenizer):
    text = {"text": "The quick brown fox."}
    n_text = len(encode_example(text, tiny_tokenizer, max_length=512)["input_ids"])
    records = [text, CHAT, {"prompt": "Q", "completion": " A"}]
    examples, stats = encode_records(records, tiny_tokenizer, max_length=n_text, truncation="drop", chat=False)
    plain = encode_example(records[2], tiny_tokenizer, max_length=512, chat=False)
    assert len(examples) == 2 and stats.kept == 2 and stats.dropped_too_long == 1
    assert stats.total_tokens == n_text + len(plain["input_ids"])
    # text: every token but the first is predicted; plain: the completion tokens + eos
    n_completion = len(tiny_tokenizer(" A", add_special_tokens=False)["input_ids"]) + 1
    assert stats.target_tokens == (n_text - 1) + n_completion
    _, stats = encode_records(records, tiny_tokenizer, max_length=3, truncation="right", chat=True)
    assert stats == EncodeStats(kept=1, dropped_no_target=2, truncated=1, target_tokens=2, total_tokens=3)


def test_inconsistent_template_is_a_clear_error(tiny_tokenizer, monkeypatch):
    # marks the last turn differently, so a prefix renders differently from the whole conversation
    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
                "{% if loop.last %}{{ '!' }}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    monkeypatch.setattr(tiny_tokenizer, "chat_template", template)
    with pytest.raises(PolmError, match=r"renders a conversation prefix differently .*at messages\[2\]"):
        encode_example(CHAT, tiny_tokenizer, max_length=512)


def test_template_errors_become_polm_errors(tiny_tokenizer, monkeypatch):
    template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    monkeypatch.setattr(tiny_tokenizer, "chat_template", template)
    with pytest.raises(PolmError, match="chat template cannot render this conversation .*System role not supported"):
        encode_example(CHAT, tiny_tokenizer, max_length=512)
