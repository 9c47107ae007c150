"""User QA tasks: metrics by hand, YAML task files, errors naming file and line."""

from __future__ import annotations

import json

import pytest

from polm.errors import PolmError
from polm.eval.registry import get_task
from polm.eval.user_tasks import short_answer
from polm.verify import normalize_text, token_f1


def test_qa_metrics_by_hand():
    assert normalize_text("The  Eiffel Tower!") == "eiffel tower"
    # pred {eiffel, tower, paris} vs ref {eiffel, tower}: P = 2/3, R = 1, F1 = 0.8
    assert token_f1("the Eiffel tower, Paris", "Eiffel Tower") == pytest.approx(0.8)
    assert token_f1("London", "Paris") == 0.0
    assert short_answer("Let me see.\nAnswer: Rome.") == "Rome."
    assert short_answer("\nParis\nbecause...") == "Paris"


def test_qa_yaml_task(tmp_path):
    (tmp_path / "caps.jsonl").write_text(json.dumps({"question": "France", "answer": ["Paris", "paris city"]}) + "\n")
    (tmp_path / "caps.yaml").write_text('data: caps.jsonl\nprompt: "Capital of {question}?"\nmetric: f1\n')
    task = get_task(str(tmp_path / "caps.yaml"))
    [item] = task.load_items()
    assert task.question(item) == "Capital of France?" and task.primary_metric == "f1"
    assert task.metrics("Answer: The Paris", item) == {"f1": 1.0, "exact_match": 1.0}
    assert task.metrics("Paris, France", item) == {"f1": pytest.approx(2 / 3), "exact_match": 0.0}


def test_malformed_task_files_name_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"question": "a", "answer": "b"}\n{"question": "c"\n')
    with pytest.raises(PolmError, match=r"bad.jsonl:2: line is not valid JSON"):
        get_task(f"qa?data={tmp_path}/bad.jsonl").load_items()
    (tmp_path / "nofield.jsonl").write_text('{"q": "a", "answer": "b"}\n')
    with pytest.raises(PolmError, match=r"nofield.jsonl:1: record has no field 'question'"):
        get_task(f"qa?data={tmp_path}/nofield.jsonl").load_items()
    (tmp_path / "t.yaml").write_text("data: bad.jsonl\nmetrc: f1\n")
    with pytest.raises(PolmError, match=r"t.yaml:2: unknown config key 'metrc'. Did you mean 'metric'"):
        get_task(str(tmp_path / "t.yaml"))
    (tmp_path / "empty.yaml").write_text("prompt: x\n")
    with pytest.raises(PolmError, match="names no data"):
        get_task(str(tmp_path / "empty.yaml"))
