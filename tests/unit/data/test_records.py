"""Record formats: detection, and validation errors that name where, which field, and the fix."""

from __future__ import annotations

import pytest

from polm.data.records import detect_format, validate_record
from polm.errors import PolmError

WHERE = "data/train.jsonl:17"
CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4"}]}


@pytest.mark.parametrize("record, fmt", [
    (CHAT, "messages"),
    ({"prompt": "2+2?", "completion": "4"}, "prompt_completion"),
    ({"text": "Paris is the capital of France."}, "text"),
    ({"prompt": "2+2?"}, "prompt_completion"),
    ({"messages": [], "text": "x"}, "messages"),  # messages wins over the others
    ({"input": "x"}, None),
    (["not", "a", "dict"], None),
])
def test_detect_format(record, fmt):
    assert detect_format(record) == fmt


def test_valid_records_return_their_format_and_keep_extra_fields():
    record = {**CHAT, "id": 7, "source": "handmade"}
    assert validate_record(record, WHERE) == "messages"
    assert record["id"] == 7 and record["source"] == "handmade"
    assert validate_record({"prompt": "", "completion": "4", "meta": {}}, WHERE) == "prompt_completion"
    assert validate_record({"text": "hello"}, WHERE, {"text"}) == "text"


def _error(record, allowed=None, **kw) -> str:
    with pytest.raises(PolmError) as info:
        validate_record(record, WHERE, allowed, **kw)
    message = str(info.value)
    assert message.startswith(WHERE + ": "), message
    return message


def _turns(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


@pytest.mark.parametrize("record, expected", [
    ("just a string", ["must be a JSON object", "a string"]),
    ({"input": "x", "target": "y"}, ["no known format", "input, target", "'messages'"]),
    ({"conversations": []}, ["ShareGPT", "'messages'"]),
    ({"instruction": "a", "output": "b"}, ["Alpaca", "'completion'"]),
    ({"completion": "4"}, ["no known format", "needs a 'prompt'"]),
    ({"messages": "hi"}, ["'messages' must be a non-empty list", "a string"]),
    ({"messages": []}, ["'messages' must be a non-empty list"]),
    ({"messages": ["hi"]}, ["'messages[0]' must be an object"]),
    (_turns(("user", "hi"), ("assistant", "ok"), ("robot", "x")), ["'messages[2].role' is 'robot'"]),
    (_turns(("user", "hi"), ("asistant", "ok")), ["'messages[1].role'", "Did you mean 'assistant'?"]),
    ({"messages": [{"role": 3, "content": "x"}]}, ["'messages[0].role' must be a string", "a number"]),
    ({"messages": [{"role": "user", "content": ["x"]}]}, ["'messages[0].content' must be a string", "a list"]),
    ({"messages": [{"role": "user"}]}, ["'messages[0].content' must be a string", "null"]),
    (_turns(("user", "hi"), ("assistant", "  ")), ["'messages[1].content' is empty"]),
    (_turns(("system", "s"), ("user", "hi")), ["no assistant turn"]),
    ({"prompt": "2+2?"}, ["'completion' is missing"]),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, ["'completion' is missing", "polm dpo"]),
    ({"prompt": 5, "completion": "4"}, ["'prompt' must be a string", "a number"]),
    ({"prompt": "2+2?", "completion": ""}, ["'completion' is empty"]),
    ({"prompt": "2+2?", "completion": None}, ["'completion' must be a string", "null"]),
    ({"text": ""}, ["'text' is empty"]),
    ({"text": {"a": 1}}, ["'text' must be a string", "an object"]),
])
def test_invalid_records_name_field_and_problem(record, expected):
    message = _error(record)
    for part in expected:
        assert part in message, (part, message)


def test_format_not_allowed_names_the_accepted_ones():
    message = _error({"text": "hello"}, allowed={"messages", "prompt_completion"})
    assert "format 'text' is not accepted" in message
    assert "messages or prompt_completion" in message


def test_prompt_only_records_pass_without_targets_but_types_are_still_checked():
    assert validate_record({"prompt": "2+2?"}, WHERE, require_targets=False) == "prompt_completion"
    assert validate_record(_turns(("user", "hi")), WHERE, require_targets=False) == "messages"
    assert "'completion' is empty" in _error({"prompt": "q", "completion": ""}, require_targets=False)


def test_assistant_turn_with_tool_calls_may_have_empty_content():
    record = {"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "weather"}]},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]}
    assert validate_record(record, WHERE) == "messages"
