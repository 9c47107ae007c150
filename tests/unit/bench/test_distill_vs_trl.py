"""bench/distill_vs_trl.py's own logic, without running a benchmark: the first-step loss compared as the
same per-token quantity (and on-policy only when both sides sampled the same rows), the same-work
check, per-step figures and the label digests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import distill_vs_trl as bench  # noqa: E402

S = bench.Settings(micro_batch_size=2, max_new_tokens=3)


def _step(targets=6, sha="t", prompts="p", rows=("a", "b"), generated=6, step_s=1.0, generation_s=0.0):
    return {"step_s": step_s, "step_cpu_s": 2 * step_s, "generation_s": generation_s, "targets": targets,
            "target_ids_sha": sha, "prompts_sha": prompts, "row_sha": list(rows), "generated_tokens": generated}


def _rounds(polm_loss=0.8125, trl_rows=("a", "b"), returned=0.5, denominator=26, count=16, trl_steps=None):
    polm = {"losses": [polm_loss], "steps": [_step(), _step()]}
    trl = {"first_loss": {"returned": returned, "denominator": denominator, "count": count, "beta": 0.5},
           "logged_losses": [returned], "steps": trl_steps or [_step(rows=trl_rows), _step()]}
    return {"polm": [polm], "trl": [trl]}


def test_trl_first_loss_is_taken_back_to_a_per_token_mean():
    # TRL divided the masked sum by 26 (num_items_in_batch, counted before on-policy generation) over
    # 16 scored tokens: sum = 0.5 x 26 = 13, per token 13 / 16 = 0.8125
    loss = bench.check_first_loss(_rounds(), S, "offpolicy")
    assert loss["trl_per_token_mean"] == pytest.approx(0.8125, abs=1e-12)
    assert loss["comparable"] and loss["agree"] and loss["rel_diff"] == pytest.approx(0.0, abs=1e-12)
    off = bench.check_first_loss(_rounds(polm_loss=0.8125 * (1 + 3e-4)), S, "offpolicy")
    assert off["rel_diff"] == pytest.approx(3e-4, rel=1e-6) and off["agree"] is False


def test_onpolicy_loss_is_compared_only_on_identical_sampled_rows():
    same = bench.check_first_loss(_rounds(), S, "onpolicy")
    assert same["comparable"] and same["agree"] and same["identical_sampled_rows"] == "2/2"
    # one row sampled differently: the losses score different tokens, so no verdict either way
    differ = bench.check_first_loss(_rounds(polm_loss=5.0, trl_rows=("a", "c")), S, "onpolicy")
    assert differ["comparable"] is False and differ["agree"] is None
    assert differ["identical_sampled_rows"] == "1/2"


def test_same_work_names_what_differs():
    assert bench.check_same_work(_rounds(), S, "onpolicy") == {"ok": True, "problems": [], "targets_per_step": [6, 6]}
    bad = _rounds(trl_steps=[_step(targets=5, prompts="q"), _step(generated=4)])
    problems = bench.check_same_work(bad, S, "onpolicy")["problems"]
    assert problems == ["trl trial 1 step 1: 5 targets, polm 6", "trl trial 1 step 1: prompts differ from polm's",
                        "trl trial 1 step 2: 4 generated tokens"]
    # off-policy the scored token ids themselves must match; prompts and sampled rows are not looked at
    off = _rounds(trl_steps=[_step(sha="u", prompts="q"), _step()])
    assert bench.check_same_work(off, S, "offpolicy")["problems"] == [
        "trl trial 1 step 1: scored token ids differ from polm's"]


def test_trial_figures_skip_step_one_and_split_generation():
    trial = {"steps": [_step(step_s=9.0, generation_s=5.0), _step(step_s=3.0, generation_s=1.0),
                       _step(step_s=5.0, generation_s=2.0), _step(step_s=4.0, generation_s=2.5)],
             "cuda_peak_mib": None, "peak_rss_mib": 900.0, "train_rss": {"peak_mib": 800.0, "peak_delta_mib": 300.0}}
    f = bench.trial_figures(trial, "cpu")
    # steps 2..4: step 3, 5, 4 -> 4; generation 1, 2, 2.5 -> 2; training 2, 3, 1.5 -> 2
    assert (f["step_s"], f["generation_s"], f["training_s"]) == (4.0, 2.0, 2.0)
    assert (f["train_peak_rss_mib"], f["train_peak_delta_mib"], f["worker_peak_rss_mib"]) == (800.0, 300.0, 900.0)


def test_scored_counts_targets_and_ignores_row_order_and_padding():
    a = bench.scored(torch.tensor([[-100, 5, 7], [-100, -100, 9]]))
    b = bench.scored(torch.tensor([[9, -100, -100], [-100, 7, 5]]))
    assert a == b and a["targets"] == 3
    assert bench.scored(torch.tensor([[5, 7, 8]]))["target_ids_sha"] != a["target_ids_sha"]
    # a sample keeps its prompt: the same completions on swapped prompts are different rows
    one = bench.sample_record([([1, 2], [3]), ([4], [5, 6])])
    assert one == bench.sample_record([([4], [5, 6]), ([1, 2], [3])]) and one["generated_tokens"] == 3
    assert bench.sample_record([([1, 2], [5, 6]), ([4], [3])])["row_sha"] != one["row_sha"]
