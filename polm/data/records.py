"""Record formats polm trains on, and the validation that names the file, line and field at fault.

Three formats: `messages` (chat turns), `prompt` + `completion` (strings) and plain `text`.
Extra fields are allowed and kept untouched.
"""

from __future__ import annotations

from typing import Any

from polm.errors import PolmError, did_you_mean

FORMATS = ("messages", "prompt_completion", "text")
ROLES = ("system", "user", "assistant", "tool")

# Field sets of formats people often bring, each with the conversion polm needs.
_FOREIGN_FORMATS = (
    ({"conversations"}, "a ShareGPT 'conversations' list: rename it to 'messages' with role/content items "
                        "(from: human -> role: user, gpt -> assistant; value -> content)"),
    ({"instruction", "output"}, "Alpaca instruction/output fields: write 'prompt' (instruction + input) and "
                                "'completion' (output)"),
    ({"chosen", "rejected"}, "a preference pair (chosen/rejected): that is data for `polm dpo`, not this recipe"),
    ({"question", "answer"}, "question/answer fields: rename them to 'prompt' and 'completion'"),
)


def detect_format(record: Any) -> str | None:
    """'messages', 'prompt_completion' or 'text' from which key is present (in that order), else None.

    A record with only `prompt` counts as prompt_completion (a prompt to generate from);
    `validate_record` decides whether the completion may be missing.
    """
    if not isinstance(record, dict):
        return None
    for key, fmt in (("messages", "messages"), ("prompt", "prompt_completion"), ("text", "text")):
        if key in record:
            return fmt
    return None


def validate_record(record: Any, where: str, allowed: set[str] | None = None, *,
                    require_targets: bool = True) -> str:
    """Check one record and return its format; raise PolmError naming `where`, the field and the fix.

    `allowed` limits the formats a recipe accepts (None = all three). With `require_targets`
    (training), a chat needs an assistant turn and a prompt needs a completion; generation and
    evaluation pass False to accept prompt-only records.
    """
    if not isinstance(record, dict):
        raise PolmError(f"a record must be a JSON object, got {_type_name(record)}", where=where,
                        fix="Write one object per record, e.g. {\"messages\": [...]} or {\"text\": \"...\"}.")
    fmt = detect_format(record)
    if fmt is None:
        raise PolmError(f"record has no known format (fields: {_field_list(record)})", where=where,
                        fix=_unknown_format_fix(record))
    if allowed is not None and fmt not in allowed:
        raise PolmError(f"format '{fmt}' is not accepted here", where=where,
                        fix="This recipe reads " + " or ".join(sorted(allowed)) + " records; convert the data.")
    check = {"messages": _check_messages, "prompt_completion": _check_prompt_completion, "text": _check_text}[fmt]
    check(record, where, require_targets)
    return fmt


def _check_messages(record: dict, where: str, require_targets: bool) -> None:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise PolmError(f"field 'messages' must be a non-empty list of turns, got {_type_name(messages)}",
                        where=where, fix="Write [{\"role\": \"user\", \"content\": \"...\"}, ...].")
    for i, turn in enumerate(messages):
        _check_turn(turn, f"messages[{i}]", where)
    if require_targets and not any(turn["role"] == "assistant" for turn in messages):
        raise PolmError("field 'messages' has no assistant turn, so there is nothing to learn", where=where,
                        fix="Add the assistant's reply as {\"role\": \"assistant\", \"content\": \"...\"}.")


def _check_turn(turn: Any, field: str, where: str) -> None:
    if not isinstance(turn, dict):
        raise PolmError(f"field '{field}' must be an object with role and content, got {_type_name(turn)}",
                        where=where, fix="Write {\"role\": \"user\", \"content\": \"...\"}.")
    role = turn.get("role")
    if not isinstance(role, str):
        raise PolmError(f"field '{field}.role' must be a string, got {_type_name(role)}", where=where,
                        fix="Use one of: " + ", ".join(ROLES) + ".")
    if role not in ROLES:
        raise PolmError(f"field '{field}.role' is '{role}', not a known role", where=where,
                        fix=did_you_mean(role, ROLES))
    content = turn.get("content")
    if not isinstance(content, str):
        raise PolmError(f"field '{field}.content' must be a string, got {_type_name(content)}", where=where,
                        fix="Put the turn's text in 'content' as a string.")
    # an assistant turn that only calls tools legitimately has no text
    if not content.strip() and not (role == "assistant" and turn.get("tool_calls")):
        raise PolmError(f"field '{field}.content' is empty", where=where,
                        fix="Fill in the text of the turn or remove the turn.")


def _check_prompt_completion(record: dict, where: str, require_targets: bool) -> None:
    _require_string(record, "prompt", where, allow_empty=True)
    if "completion" in record or require_targets:
        if "completion" not in record:
            raise PolmError("field 'completion' is missing (a prompt needs the text to learn)", where=where,
                            fix=_completion_fix(record))
        _require_string(record, "completion", where, allow_empty=False)


def _check_text(record: dict, where: str, require_targets: bool) -> None:
    _require_string(record, "text", where, allow_empty=False)


def _require_string(record: dict, key: str, where: str, *, allow_empty: bool) -> None:
    value = record[key]
    if not isinstance(value, str):
        raise PolmError(f"field '{key}' must be a string, got {_type_name(value)}", where=where,
                        fix=f"Write '{key}' as a JSON string.")
    if not allow_empty and not value.strip():
        raise PolmError(f"field '{key}' is empty", where=where, fix=f"Fill in '{key}' or drop the record.")


def _completion_fix(record: dict) -> str:
    if {"chosen", "rejected"} <= set(record):
        return "This is a preference pair (chosen/rejected): use it with `polm dpo`."
    return "Add a 'completion' string, or use {\"text\": ...} for plain text."


def _unknown_format_fix(record: dict) -> str:
    keys = set(record)
    for fields, hint in _FOREIGN_FORMATS:
        if fields <= keys:
            return f"This looks like {hint}."
    if "completion" in keys:
        return "A 'completion' needs a 'prompt' string next to it."
    return "Give each record 'messages' (chat turns), 'prompt' + 'completion', or 'text'."


def _field_list(record: dict) -> str:
    names = [str(k) for k in record]
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "none"


def _type_name(value: Any) -> str:
    """The JSON name of a Python value's type, as the user wrote it."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
