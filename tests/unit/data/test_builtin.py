"""Builtin data sources: worked arithmetic solutions checked by hand and by reasoning-gym's own verifiers,
GSM8K parsing, seeded subsets and the errors people see (answer extraction and scoring: test_verify)."""

from __future__ import annotations

import json
import re
from decimal import ROUND_FLOOR, Decimal

import pytest
import reasoning_gym
from reasoning_gym.arithmetic.basic_arithmetic import eval_floordiv

from polm.data.builtin import (
    generator_seed,
    load_builtin,
    parse_query,
    parse_value,
    worked_solution,
)
from polm.errors import PolmError
from polm.verify import score_response

# --- worked solutions, derived by hand -----------------------------------------------------------------

@pytest.mark.parametrize("expression, steps, value", [
    ("57 + 87 + 70", ["57 + 87 = 144", "144 + 70 = 214"], 214),
    # precedence: the product first, although it is written second
    ("3 + 4 * 5", ["4 * 5 = 20", "3 + 20 = 23"], 23),
    ("(1 + 2) * (3 - 5)", ["1 + 2 = 3", "3 - 5 = -2", "3 * -2 = -6"], -6),
    # a negative literal is an operand, not an operation
    ("2 - -1", ["2 - -1 = 3"], 3),
    ("-( 3 + 4 ) * 2", ["3 + 4 = 7", "-(7) = -7", "-7 * 2 = -14"], -14),
    ("5 - -( -3 * 4 )", ["-3 * 4 = -12", "-(-12) = 12", "5 - 12 = -7"], -7),
    # '/' is floor division in basic_arithmetic: -7 // 2 = -4, and it says so when not exact
    ("12 / 4", ["12 / 4 = 3"], 3),
    ("-7 / 2", ["-7 / 2 = -4 (rounded down)"], -4),
    ("6 - 7 / 2 * 2", ["7 / 2 = 3 (rounded down)", "3 * 2 = 6", "6 - 6 = 0"], 0),
    ("4.4439 + 1.2537 - 7.8993", ["4.4439 + 1.2537 = 5.6976", "5.6976 - 7.8993 = -2.2017"], Decimal("-2.2017")),
    ("7", [], 7),
])
def test_worked_solution_by_hand(expression, steps, value):
    assert worked_solution(expression) == (steps, value)


def test_worked_solution_left_to_right_ignores_precedence():
    # basic_arithmetic with allow_parentheses=false computes 3 + 4 * 5 as (3 + 4) * 5
    assert worked_solution("3 + 4 * 5", left_to_right=True) == (["3 + 4 = 7", "7 * 5 = 35"], 35)


@pytest.mark.parametrize("expression", ["(A↑A)+(A&B')", "x + 1", "2 ** 3", "94*4 - 61 -"])
def test_worked_solution_rejects_non_arithmetic(expression):
    with pytest.raises((ValueError, SyntaxError)):
        worked_solution(expression)


_STEP = re.compile(r"^(-?[\d.]+) ([-+*/]) (-?[\d.]+) = (-?[\d.]+)( \(rounded down\))?$")
_NEGATION = re.compile(r"^-\((-?[\d.]+)\) = (-?[\d.]+)$")


def _check_step(line: str) -> str:
    """Assert one line is one correct operation; return its value."""
    if m := _NEGATION.match(line):
        assert Decimal(m.group(2)) == -Decimal(m.group(1)), line
        return m.group(2)
    m = _STEP.match(line)
    assert m, f"not a single operation: {line!r}"
    a, op, b, c = Decimal(m.group(1)), m.group(2), Decimal(m.group(3)), Decimal(m.group(4))
    if op == "/":  # floor division, flagged when inexact
        expected = (a / b).to_integral_value(rounding=ROUND_FLOOR)
        assert bool(m.group(5)) == (a % b != 0), line
    else:
        expected = {"+": a + b, "-": a - b, "*": a * b}[op]
    assert c == expected, line
    return m.group(4)


@pytest.mark.parametrize("ref, task", [
    ("builtin:reasoning-gym/basic_arithmetic?n=2000&seed=7", "basic_arithmetic"),
    ("builtin:reasoning-gym/basic_arithmetic?n=2000&seed=3&whitespace=random", "basic_arithmetic"),
    ("builtin:reasoning-gym/chain_sum?n=2000&seed=7&allow_negation=true", "chain_sum"),
    ("builtin:reasoning-gym/decimal_chain_sum?n=300&seed=7", "decimal_chain_sum"),
])
def test_worked_solutions_reach_the_answer_under_the_task_scorer(ref, task):
    records = load_builtin(ref)
    dataset = reasoning_gym.create_dataset(task, **records[0]["config"])
    for record in records:
        *steps, last = record["completion"].split("\n")
        assert last == f"Answer: {record['answer']}"
        assert steps, record["prompt"]
        final = [_check_step(line) for line in steps][-1]
        assert dataset.score_answer(final, record["entry"]) == 1.0, record["completion"]
        if task == "basic_arithmetic":  # parity with reasoning-gym's own evaluator
            assert int(final) == eval_floordiv(record["entry"]["metadata"]["expression"])
        if task == "chain_sum":  # one operation per line
            assert len(steps) == record["entry"]["metadata"]["num_terms"] - 1


def test_two_term_arithmetic_has_exactly_one_step():
    records = load_builtin("builtin:reasoning-gym/basic_arithmetic?n=200&seed=0&min_terms=2&max_terms=2&max_digits=2")
    for record in records:  # one binary operation, plus one line per negated group such as -( 32 / 8 )
        steps = record["completion"].split("\n")[:-1]
        assert sum(bool(_STEP.match(line)) for line in steps) == 1, record["completion"]
        assert len(steps) - 1 == record["entry"]["metadata"]["expression"].count("-(")


def test_left_to_right_mode_is_worked_only_where_consistent():
    # Without parentheses basic_arithmetic evaluates left to right; with '/' it prints one divisor and
    # divides by another, so those entries cannot be worked and get the answer alone.
    plain = load_builtin("builtin:reasoning-gym/basic_arithmetic?n=500&seed=2&allow_parentheses=false&operators=+,-,*")
    assert all(r["completion"].count("\n") == r["entry"]["metadata"]["num_terms"] - 1 for r in plain)
    mixed = load_builtin("builtin:reasoning-gym/basic_arithmetic?n=500&seed=2&allow_parentheses=false")
    for record in mixed:
        if "\n" in record["completion"]:
            assert score_response(record["completion"].rsplit("\n", 1)[0], record) == 1.0
        else:
            assert record["completion"] == f"Answer: {record['answer']}"
    assert 0 < sum("\n" in r["completion"] for r in mixed) < len(mixed)


# --- sources, records and subsets ----------------------------------------------------------------------

def test_tasks_without_a_single_answer_have_no_completion():
    record = load_builtin("builtin:reasoning-gym/boxnet?n=1")[0]
    assert record["answer"] is None and record["completion"] is None
    json.dumps(record)


def test_gsm8k_records():
    records = load_builtin("builtin:gsm8k-test")
    assert len(records) == 1319
    first = records[0]
    assert first["prompt"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert first["completion"].endswith("#### 18") and first["answer"] == "18"
    assert (first["source"], first["id"]) == ("gsm8k-test", 0)
    assert records[146]["completion"].endswith("#### 2,125") and records[146]["answer"] == "2125"


def test_wiki_records():
    records = load_builtin("builtin:wiki-summaries")
    assert len(records) == 10033
    assert records[1]["title"] == "2001: A Space Odyssey"
    assert records[1]["text"].startswith("2001: A Space Odyssey is a 1968 epic science fiction film")


def test_reasoning_gym_record_fields():
    record = load_builtin("builtin:reasoning-gym/chain_sum?n=3&seed=0&offset=2&max_digits=2")[2]
    entry = reasoning_gym.create_dataset("chain_sum", seed=generator_seed(0), size=5, max_digits=2)[4]
    assert record["prompt"] == entry["question"] and record["answer"] == entry["answer"]
    assert (record["task"], record["id"], record["source"]) == ("chain_sum", 4, "reasoning-gym/chain_sum")
    assert record["entry"]["metadata"]["difficulty"]["num_terms"] == [2, 6]  # tuples became lists
    json.dumps(record)


def test_query_parsing():
    assert parse_value("3") == 3 and parse_value("1.5") == 1.5 and parse_value("False") is False
    assert parse_value("single") == "single" and parse_value("inf") == "inf"
    assert parse_query("n=10&seed=3&flag=true&ops=+,-&name=a%20b", where="t") == {
        "n": 10, "seed": 3, "flag": True, "ops": "+,-", "name": "a b"}
    records = load_builtin("builtin:reasoning-gym/basic_arithmetic?n=50&operators=+,-")
    assert records[0]["config"]["operators"] == ["+", "-"]
    assert not any(op in r["entry"]["metadata"]["expression"] for r in records for op in "*/")


@pytest.mark.parametrize("source", ["gsm8k-test", "wiki-summaries"])
def test_seeded_subsets_are_reproducible_and_disjoint(source):
    key = "prompt" if source == "gsm8k-test" else "title"
    a = load_builtin(f"builtin:{source}?n=50&seed=3")
    assert [r[key] for r in a] == [r[key] for r in load_builtin(f"builtin:{source}?n=50&seed=3")]
    b = load_builtin(f"builtin:{source}?n=50&seed=3&offset=50")
    assert not {r[key] for r in a} & {r[key] for r in b}
    both = load_builtin(f"builtin:{source}?n=100&seed=3")
    assert [r[key] for r in both] == [r[key] for r in a + b]
    assert [r[key] for r in load_builtin(f"builtin:{source}?n=50&seed=4")] != [r[key] for r in a]


def test_reasoning_gym_offsets_are_disjoint():
    a = load_builtin("builtin:reasoning-gym/chain_sum?n=100&seed=1")
    b = load_builtin("builtin:reasoning-gym/chain_sum?n=100&seed=1&offset=100")
    assert [r["id"] for r in a + b] == list(range(200))
    assert [r["prompt"] for r in a] == [r["prompt"] for r in load_builtin("builtin:reasoning-gym/chain_sum?n=100&seed=1")]
    assert len({r["prompt"] for r in a} & {r["prompt"] for r in b}) < 5  # only chance repeats of short sums


def test_different_seeds_never_share_entries_by_construction():
    # reasoning-gym draws entry i from Random(seed + i): unmapped, seed=0&n=2000 would hold all of
    # seed=1234&n=200 (a train/test leak). polm's seeds map to far-apart generator seeds.
    train = load_builtin("builtin:reasoning-gym/basic_arithmetic?n=2000&seed=0")
    test = load_builtin("builtin:reasoning-gym/basic_arithmetic?n=200&seed=1234")
    streams = [{r["config"]["seed"] + r["id"] for r in records} for records in (train, test)]
    assert not streams[0] & streams[1]
    shared = {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert len(shared) <= 5  # chance repeats of tiny sums such as 'Calculate -3 * 6.'
    raw_train = reasoning_gym.create_dataset("basic_arithmetic", seed=0, size=2000)
    raw_test = reasoning_gym.create_dataset("basic_arithmetic", seed=1234, size=200)
    assert raw_train[1234 + 7]["question"] == raw_test[7]["question"]  # the leak that the mapping avoids
    assert all(0 <= generator_seed(s) < 2**32 - 2**24 for s in range(1000))


# --- errors --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ref, message", [
    ("builtin:gsm8k-tset", "unknown builtin source 'gsm8k-tset'. Did you mean 'gsm8k-test'?"),
    ("builtin:reasoning-gym/chain_summ", "unknown reasoning-gym task 'chain_summ'. Did you mean 'chain_sum'?"),
    ("builtin:reasoning-gym/chain_sum?max_digit=2",
     "has no option 'max_digit'. Did you mean 'max_digits'? Valid options: allow_negation, max_digits, max_terms"),
    ("builtin:reasoning-gym/chain_sum?size=10", "use n= for the number of records"),
    ("builtin:reasoning-gym/chain_sum?min_terms=0", "rejected the options of 'chain_sum' (min_terms must be positive)"),
    ("builtin:reasoning-gym/chain_sum?n=-1", "query key 'n' must be a non-negative integer"),
    ("builtin:gsm8k-test?m=5", "unknown query key 'm' for builtin:gsm8k-test. Valid keys: n, seed, offset"),
    ("builtin:gsm8k-test?n", "query item 'n' is not key=value"),
    ("builtin:gsm8k-test?n=1.5", "query key 'n' must be a non-negative integer, got 1.5"),
    ("builtin:reasoning-gym/chain_sum?n=10&offset=16777215", "exceeds 16777216 entries per seed"),
    ("gsm8k-test", "'gsm8k-test' is not a builtin reference"),
])
def test_errors_name_the_problem_and_the_fix(ref, message):
    with pytest.raises(PolmError) as err:
        load_builtin(ref)
    assert message in str(err.value)
