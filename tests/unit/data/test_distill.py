"""Sequence-KD records: the verifier filter keeps only correct generations when a record has an answer,
and every record carries its provenance."""

from __future__ import annotations

import pytest

from polm.config import load_config
from polm.data.distill import SequenceKDConfig, keep_verified
from polm.errors import PolmError


def test_verifier_keeps_correct_answers_and_records_carry_provenance():
    cfg = load_config(SequenceKDConfig, None, ["teacher=t", "n=2"])
    records = [{"prompt": "What is 2 + 3?", "answer": "5", "id": 7},
               {"messages": [{"role": "user", "content": "hello"}]}]
    prompts = ["What is 2 + 3?", [{"role": "user", "content": "hello"}]]
    outputs = [["The answer is 5.", "The answer is 6."], ["good morning", " "]]
    rows, stats = keep_verified(records, prompts, outputs, cfg, {"teacher": "t", "teacher_sha256": "abc"})
    assert stats == {"prompts": 2, "generations": 4, "kept": 2, "rejected_by_verifier": 1, "empty": 1,
                     "verified_prompts": 1}
    first, second = rows
    assert first == {"prompt": "What is 2 + 3?", "completion": "The answer is 5.", "builder": "sequence_kd",
                     "teacher": "t", "teacher_sha256": "abc", "record": 7, "record_source": None, "sample": 0,
                     "score": 1.0, "answer": "5"}
    assert second["messages"][-1] == {"role": "assistant", "content": "good morning"}
    assert second["score"] is None and second["record"] == 1            # no answer: nothing to verify
    no_filter = load_config(SequenceKDConfig, None, ["teacher=t", "verify=false"])
    assert len(keep_verified(records, prompts, outputs, no_filter, {})[0]) == 3


def test_bad_settings():
    with pytest.raises(PolmError, match="teacher: no teacher model is given"):
        load_config(SequenceKDConfig, None, [])
    with pytest.raises(PolmError, match="invalid sampling settings"):
        load_config(SequenceKDConfig, None, ["teacher=t", "temperature=-1"])
