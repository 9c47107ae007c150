"""Answer extraction and scoring: every way a response states its answer, GSM8K numeric matches and
reasoning-gym's own verifiers on records rebuilt from their config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import reasoning_gym

import polm
from polm.data.builtin import load_builtin
from polm.errors import PolmError
from polm.verify import extract_final_answer, score_response

# --- extraction ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("There are 1,234 apples.\nAnswer: 1,234", "1234"),
    ("Answer: -17.", "-17"),
    ("**Answer:** 42", "42"),
    ("Answer: 3\nwait, no.\nAnswer: 4", "4"),
    ("Answer: 5\nor is it \\boxed{7}", "5"),  # an Answer line beats \boxed
    ("so \\boxed{\\frac{1}{2}} it is", "\\frac{1}{2}"),
    ("\\boxed{7} or #### 8", "7"),  # \boxed beats ####
    ("She makes 9 * 2 = 18 dollars.\n#### 18", "18"),
    ("#### 2,125", "2125"),
    ("Answer: $18$", "18"),
    ("I think it is 12, or maybe -3.5 in the end", "-3.5"),
    ("no idea", None),
    ("Answer: True", "True"),
    ("Answer: 1, 2, 3", "1, 2, 3"),  # a list keeps its commas
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_extract_multiline_answer_takes_the_rest():
    assert extract_final_answer("grid:\nAnswer:\n1 2\n3 4\n", multiline=True) == "1 2\n3 4"
    assert extract_final_answer("Answer:\n1 2\n3 4") == "1 2"


# --- scoring -------------------------------------------------------------------------------------------

def test_score_gsm8k_response():
    record = load_builtin("builtin:gsm8k-test")[0]  # answer 18
    assert score_response("She sells 9 eggs at $2.\n#### 18", record) == 1.0
    assert score_response("Answer: 18.0", record) == 1.0
    assert score_response("The answer is $18.", record) == 1.0
    assert score_response("Answer: she makes $18 a day", record) == 1.0
    assert score_response("Answer: 19", record) == 0.0
    assert score_response("I do not know.", record) == 0.0


def test_score_reasoning_gym_response():
    record = load_builtin("builtin:reasoning-gym/chain_sum?n=1&seed=4")[0]
    right, wrong = record["answer"], str(int(record["answer"]) + 1)
    assert score_response(f"Let me add.\nAnswer: {right}", record) == 1.0
    assert score_response(f"Answer: {wrong}", record) == 0.0


def test_scoring_survives_a_json_round_trip_of_tuple_entries():
    # arc_agi compares tuple grids; after JSON the stored entry holds lists, so polm rebuilds the entry
    record = load_builtin("builtin:reasoning-gym/arc_agi?n=1&seed=0")[0]
    reloaded = json.loads(json.dumps(record))
    dataset = reasoning_gym.create_dataset("arc_agi", **record["config"])
    assert dataset.score_answer(record["answer"], reloaded["entry"]) < 1.0
    assert score_response(f"Answer:\n{record['answer']}", reloaded) == 1.0


def test_scoring_a_record_without_config_uses_its_stored_entry():
    entry = {"question": "1 + 2 =", "answer": "3", "metadata": {}}
    record = {"task": "chain_sum", "entry": entry, "answer": "3"}
    assert score_response("Answer: 3", record) == 1.0
    assert score_response("Answer: 4", record) == 0.0


def test_scoring_an_unknown_task_suggests_the_closest():
    with pytest.raises(PolmError, match="unknown reasoning-gym task 'chain_summ'. Did you mean 'chain_sum'?"):
        score_response("Answer: 3", {"task": "chain_summ", "entry": {}, "answer": "3"})


def test_own_completions_score_full_marks_on_many_tasks():
    for task in ("leg_counting", "word_sorting", "spell_backward", "gcd", "products", "rotate_matrix"):
        for record in load_builtin(f"builtin:reasoning-gym/{task}?n=5&seed=1"):
            assert score_response(record["completion"], record) == 1.0, (task, record["completion"])


def test_verify_does_not_import_the_data_builders():
    # data.builtin draws reasoning-gym generators from verify, so the import may only go that way
    code = "import sys, polm.verify; print(sorted(m for m in sys.modules if m.startswith('polm.data')))"
    env = {**os.environ, "PYTHONPATH": str(Path(polm.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"
