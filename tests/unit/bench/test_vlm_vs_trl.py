"""bench/vlm_vs_trl.py's own logic, without running a benchmark: the examples in polm's training order
handed to TRL as prompt/completion rows, the digit images written as the RGB both sides read, per-step
targets and rates (step 1 left out), the loss agreement and the same-work verdict."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import vlm_vs_trl as bench  # noqa: E402

from polm.train.batches import BatchStream  # noqa: E402
from polm.vlm.data import load_image_records  # noqa: E402
from polm.vlm.images import load_image  # noqa: E402


def test_polm_order_is_the_sequence_of_micro_batches_the_recipe_draws():
    order = bench.polm_order(12, 4, seed=3)
    stream = BatchStream([f"ex{i}" for i in range(12)], list, 4, seed=3)
    assert [f"ex{i}" for i in order] == next(stream) + next(stream) + next(stream)
    assert sorted(order) == list(range(12)) and order != list(range(12))   # a permutation, shuffled


def test_digit_records_are_rgb_pngs_of_the_digits_with_fixed_answers(tmp_path):
    path = bench.write_digit_records(tmp_path, 3, seed=5)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    source = load_image_records("builtin:digits?n=3&seed=5")
    for row, rec in zip(rows, source):
        assert row["prompt"] == "What digit is this?" and row["completion"] == f"a handwritten digit {rec['label']}"
        rgb = load_image(str(tmp_path / row["image"]))
        assert rgb.shape == (8, 8, 3) and np.array_equal(rgb[:, :, 1], np.asarray(rec["images"][0]))


def test_trl_rows_are_the_jsonl_records_in_polm_order_as_conversational_prompt_completion(tmp_path):
    path = bench.write_digit_records(tmp_path, 3, seed=5)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    trl = bench.trl_records(path, [2, 0, 1])
    assert [r["image_path"] for r in trl] == [str(tmp_path / rows[i]["image"]) for i in (2, 0, 1)]
    assert trl[0]["prompt"] == [{"role": "user", "content": [{"type": "image"},
                                                             {"type": "text", "text": "What digit is this?"}]}]
    assert trl[0]["completion"] == [{"role": "assistant", "content": [{"type": "text", "text": rows[2]["completion"]}]}]


def test_step_targets_and_rates_leave_step_one_out():
    assert bench.step_targets([3, 4, 5, 6, 7, 8], grad_accum=2) == [7, 11, 15]
    assert bench.step_rates([7, 11, 15], [10.0, 2.0, 3.0]) == [5.5, 5.0]


def test_losses_agree_within_the_stated_relative_tolerance():
    ok = bench.loss_agreement([2.0, 1.00005], [2.0, 1.0])
    assert ok["agree"] and ok["max_rel_diff"] == pytest.approx(5e-5) and ok["rtol"] == bench.LOSS_RTOL == 1e-4
    assert not bench.loss_agreement([2.0, 1.0002], [2.0, 1.0])["agree"]
    assert not bench.loss_agreement([2.0], [2.0, 1.0])["agree"]   # a missing step is not agreement
    assert math.isnan(bench.loss_agreement([], [])["max_rel_diff"]) and not bench.loss_agreement([], [])["agree"]


def _check(polm_mb=(5, 6, 7, 8), trl_mb=(5, 6, 7, 8), pixel=0.0):
    return {"ids_equal": True, "labels_equal": True, "pixel_max_abs_diff": pixel, "length_min": 80,
            "length_max": 90, "polm_targets_per_micro_batch": list(polm_mb), "trl_targets_per_micro_batch": list(trl_mb)}


def test_same_work_needs_equal_inputs_targets_and_losses():
    s = bench.Settings(steps=2, grad_accum=2)
    polm = {"losses": [3.0, 2.5], "targets": [11, 15]}
    trl = {"losses": [3.0, 2.5]}
    same = bench.check_same_work(_check(), polm, trl, s)
    assert same["ok"] and same["targets_per_step"] == [11, 15]
    assert not bench.check_same_work(_check(trl_mb=(5, 6, 7, 9)), polm, trl, s)["ok"]
    assert not bench.check_same_work(_check(pixel=1e-3), polm, trl, s)["ok"]
    assert not bench.check_same_work(_check(), {**polm, "targets": [11, 14]}, trl, s)["ok"]
    assert not bench.check_same_work(_check(), polm, {"losses": [3.0, 2.6]}, s)["ok"]


def test_goals_are_the_issue_ratios():
    same = {"agree": True}
    assert bench.goals(1.3, 0.8, same) == {"throughput_ge_1.3x": True, "memory_le_0.8x": True, "same_losses": True}
    assert bench.goals(1.29, 0.81, {"agree": False}) == {"throughput_ge_1.3x": False, "memory_le_0.8x": False,
                                                        "same_losses": False}
