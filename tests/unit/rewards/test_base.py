"""Text rewards by hand, their weighted combination, and what happens when a reward fails."""

import math

import pytest

from polm.data.builtin import load_builtin
from polm.errors import PolmError
from polm.rewards import REWARDS, RewardSet, reward


def test_math_answer_matches_numbers_gsm8k_style():
    recs = [{"answer": "1234"}, {"answer": "18"}, {"answer": "3"}]
    got = REWARDS.get("math_answer")(["so #### 1,234", "The total is $18.", "Answer: 4"], recs)
    assert got == [1.0, 1.0, 0.0]


def test_reasoning_gym_uses_the_task_scorer():
    rec = load_builtin("builtin:reasoning-gym/basic_arithmetic?n=1&seed=5")[0]
    got = REWARDS.get("reasoning_gym")([f"steps...\nAnswer: {rec['answer']}", "Answer: banana"], [rec, rec])
    assert got == [1.0, 0.0]


def test_format_and_length_by_hand():
    assert REWARDS.get("format")(["x\nAnswer: 3", "the answer is 3"], [{}, {}]) == [1.0, 0.0]
    tags = r"(?s)<answer>.*</answer>"
    assert REWARDS.get("format")(["<answer>3</answer>", "3"], [{}, {}], pattern=tags) == [1.0, 0.0]
    # soft zone starts at 400 - 100 = 300 chars: 350 chars -> -0.5, 500 -> -1
    assert REWARDS.get("length")(["a" * 250, "a" * 350, "a" * 500], [{}] * 3) == [0.0, -0.5, -1.0]


def test_weighted_combination_and_per_reward_metrics():
    rs = RewardSet({"math_answer": 1.0, "format": 0.5})
    scores = rs.score(["Answer: 7", "7", "Answer: 8"], [{"answer": "7"}] * 3)
    assert scores.per_reward == {"math_answer": [1.0, 1.0, 0.0], "format": [1.0, 0.0, 1.0]}
    assert scores.total == [1.5, 1.0, 0.5]
    m = scores.metrics()
    assert m["reward/mean"] == pytest.approx(1.0)
    assert m["reward/std"] == pytest.approx(math.sqrt(1 / 6))       # population std of 1.5, 1, .5
    assert m["reward/math_answer/mean"] == pytest.approx(2 / 3)
    assert m["reward/format/failures"] == 0.0


@reward("test_flaky")
def _flaky(completions, records):
    """Raises on 'boom', returns NaN on 'nan', else 1."""
    if any(c == "boom" for c in completions):
        raise RuntimeError("cannot score boom")
    return [math.nan if c == "nan" else 1.0 for c in completions]


def test_a_reward_that_raises_or_returns_nan_is_counted_and_reported(capsys):
    rs = RewardSet({"test_flaky": 1.0, "format": 1.0})
    scores = rs.score(["ok", "boom", "nan", "Answer: 2"], [{}] * 4)
    assert scores.per_reward["test_flaky"] == [1.0, 0.0, 0.0, 1.0]    # failures score 0, others still count
    assert scores.per_reward["format"] == [0.0, 0.0, 0.0, 1.0]
    assert scores.failures == {"test_flaky": 2, "format": 0}
    assert scores.metrics()["reward/test_flaky/failures"] == 2.0
    rs.score(["boom"], [{}])
    assert rs.failures["test_flaky"] == 3                              # running total for the final report
    err = capsys.readouterr().err
    assert "reward 'test_flaky' failed (RuntimeError: cannot score boom)" in err
    assert err.count("warning") == 1                                   # reported once, counted every time


def test_records_without_the_fields_a_reward_needs():
    rs = RewardSet({"math_answer": 1.0})
    with pytest.raises(PolmError, match=r"data.jsonl: record 2 has no 'answer' field, which reward 'math_answer' "
                                        r"needs.*fields present: prompt"):
        rs.check_records([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], "data.jsonl")


def test_bad_reward_configs():
    with pytest.raises(PolmError, match="Did you mean 'math_answer'"):
        RewardSet({"math_answr": 1.0})
    with pytest.raises(PolmError, match="no reward is configured"):
        RewardSet({})
    with pytest.raises(PolmError, match="reward_options has options for 'code'"):
        RewardSet({"format": 1.0}, {"code": {"timeout_s": 1}})


def test_reward_options_are_checked_against_the_reward_signature():
    rs = RewardSet({"format": 1.0}, {"format": {"pattern": "ok"}})
    assert rs.options == {"format": {"pattern": "ok"}} and rs.score(["ok"], [{}]).total == [1.0]
    with pytest.raises(PolmError) as err:
        RewardSet({"format": 1.0}, {"format": {"patern": "ok"}})
    assert err.value.message == ("reward_options.format.patern: reward 'format' has no parameter 'patern'. "
                                 "Did you mean 'pattern'? Its parameters: pattern.")


def test_plugin_reward_by_module_path():
    rs = RewardSet({"polm.rewards.builtin:answer_format": 2.0})
    assert rs.score(["Answer: 1"], [{}]).total == [2.0]
