"""The bench scripts' own logic, without running a benchmark: DPO's like-for-like pairs, GRPO's per-step
figures, same-work checks and TRL options, merge's per-phase figures, sharded-output comparison and
its worker (a tiny-model merge through polm and mergekit in fresh processes)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import dpo_vs_trl as dpo  # noqa: E402
import grpo_vs_trl as grpo  # noqa: E402
import merge_vs_mergekit as merge  # noqa: E402

# --- DPO ---------------------------------------------------------------------------------------------

def _dpo_trial(step_wall: list[float], precompute_s: float, first_loss: float = math.log(2)) -> dict:
    return {"step_wall_s": step_wall, "step_cpu_s": [2 * w for w in step_wall], "precompute_s": precompute_s,
            "cuda_peak_mib": None, "peak_rss_mib": 1000.0, "rss_at_train_start_mib": 900.0, "params": 100,
            "trainable": 10, "layers": 2, "hidden": 4, "losses": [first_loss, 0.6], "grad_norms": [1.0, 1.0],
            "logps_chosen": [-10.0, -9.0], "logps_rejected": [-12.0, -13.0]}


STEPS = [{"tokens": 10, "len_sq": 50, "targets": 4}] * 4
PEAK = {"flops_per_s": 1e9, "flops_per_cpu_s": 1e9}


def test_dpo_runs_each_polm_side_next_to_its_trl_partner():
    assert dpo.sides_of(["precompute", "onthefly"]) == ["polm-precompute", "trl-precompute", "polm-onthefly", "trl"]
    assert dpo.sides_of(["onthefly"]) == ["polm-onthefly", "trl"]


def test_dpo_step_time_counts_the_precompute_pass_share():
    side = dpo.summarize_side([_dpo_trial([9, 1, 2, 3], 4.0), _dpo_trial([9, 3, 4, 5], 8.0)], STEPS, PEAK, "cpu")
    # steps 2..4: medians 2 and 4; shares 4/4 = 1 and 8/4 = 2 -> 3 and 6, median 4.5
    assert side["step_s"] == 3.0
    assert side["step_s_with_precompute"] == 4.5
    assert side["spread"]["step_s_with_precompute"] == {"median": 4.5, "min": 3.0, "max": 6.0, "values": [3.0, 6.0]}


def test_dpo_headline_is_one_ratio_per_like_for_like_pair():
    rounds = {"polm-precompute": [_dpo_trial([9, 1, 1, 1], 4.0)], "trl-precompute": [_dpo_trial([9, 2, 2, 2], 8.0)],
              "polm-onthefly": [_dpo_trial([9, 3, 3, 3], 0.0)], "trl": [_dpo_trial([9, 4, 4, 4], 0.0)]}
    for trials in rounds.values():
        trials[0]["tokenization"], trials[0]["optimizer"], trials[0]["tokens"], trials[0]["targets"] = {}, "adamw", [], []
        trials[0]["reference"] = {}
    results = dpo.summarize(rounds, STEPS, PEAK, "cpu")
    # precompute: (1 + 4/4) / (2 + 8/4) = 0.5; on-the-fly: 3 / 4
    assert results["headline"] == {"precompute": 0.5, "onthefly": 0.75}
    assert results["pairs"]["precompute"]["step_time"] == 0.5
    assert results["pairs"]["onthefly"]["precompute_pass"] is None
    assert results["same_work"]["polm-precompute"]["peer"] == "trl-precompute"
    assert results["same_work"]["polm-onthefly"]["first_loss_diff_vs_peer"] == 0.0
    assert dpo.goals(results) == {
        "precompute_step_with_precompute_le_1.0x": True, "precompute_memory_le_1.0x": True,
        "precompute_same_first_loss": True, "onthefly_step_with_precompute_le_1.0x": True,
        "onthefly_memory_le_1.0x": True, "onthefly_same_first_loss": True}


def test_dpo_refuses_a_precompute_side_whose_pass_did_not_run():
    with pytest.raises(RuntimeError, match="trl-precompute"):
        dpo.check_precompute_ran({"trl-precompute": [_dpo_trial([1, 1], 2.0), _dpo_trial([1, 1], 0.0)]})
    dpo.check_precompute_ran({"trl": [_dpo_trial([1, 1], 0.0)]})


def test_dpo_trl_precompute_runs_as_many_sequences_per_forward_as_polm():
    s = dpo.Settings()
    assert 2 * dpo.trl_ref_batch_size(s) == s.ref_batch_size
    assert dpo.trl_options(s, True)["precompute_ref_batch_size"] == s.ref_batch_size // 2
    assert dpo.parse_args([]).pairs == ["precompute", "onthefly"]


# --- GRPO --------------------------------------------------------------------------------------------

def _grpo_trial(steps: list[tuple[float, float, int]], prompts=((1, 2), (3,)), peak: float = 500.0) -> dict:
    return {"steps": [{"step_s": s, "step_cpu_s": 2 * s, "generation_s": g, "generation_cpu_s": g, "generated_tokens": n,
                       "completions": 4, "reward": 0.5, "prompts": [list(p) for p in prompts]} for s, g, n in steps],
            "peak_rss_mib": peak, "load_avg_1m_start": 1.0, "load_avg_1m_end": 1.5}


def test_grpo_trial_figures_skip_step_one_and_divide_by_generated_tokens():
    f = grpo.trial_figures(_grpo_trial([(10, 5, 100), (4, 2, 100), (6, 2, 100)]))
    assert (f["step_s"], f["generation_s"], f["training_s"]) == (5.0, 2.0, 3.0)   # training: median of 2 and 4
    assert f["step_s_per_generated_token"] == 10 / 200
    assert f["generation_s_per_generated_token"] == 4 / 200
    assert f["generated_tokens"] == 100


def test_grpo_ratios_per_round_pair_the_trials_that_ran_together():
    polm = grpo.summarize_side([_grpo_trial([(9, 1, 8), (2, 1, 8)]), _grpo_trial([(9, 1, 8), (4, 1, 8)])])
    trl = grpo.summarize_side([_grpo_trial([(9, 1, 8), (4, 1, 8)]), _grpo_trial([(9, 1, 8), (4, 1, 8)])])
    r = grpo.ratios({"polm": polm, "trl": trl})
    assert r["step_s"] == 3 / 4
    assert r["step_s_per_round"] == {"median": 0.75, "min": 0.5, "max": 1.0, "values": [0.5, 1.0]}


def test_grpo_same_work_needs_the_same_prompts_and_fixed_token_counts():
    s = grpo.Settings(prompts_per_step=1, group_size=4, max_new_tokens=2, steps=2)
    good = {"polm": [_grpo_trial([(1, 1, 8), (1, 1, 8)])], "trl": [_grpo_trial([(1, 1, 8), (1, 1, 8)])]}
    work = grpo.check_same_work(good, s)
    assert work["ok"] and work["expected_generated_tokens_per_step"] == 8 and work["prompt_tokens_per_step"] == [3, 3]
    bad = {"polm": good["polm"], "trl": [_grpo_trial([(1, 1, 8), (1, 1, 7)], prompts=((1, 2), (4,)))]}
    problems = grpo.check_same_work(bad, s)["problems"]
    assert len(problems) == 2 and "prompt token ids" in problems[0] and "[8, 7]" in problems[1]
    assert grpo.check_same_work(bad, grpo.Settings(prompts_per_step=1, fixed_length=False))["problems"] == problems[:1]


def test_grpo_prompts_are_the_ones_polm_rollout_stream_draws():
    from polm.rollout.stream import RolloutStream

    s = grpo.Settings(steps=3, prompts_per_step=2, group_size=2)
    drawn = []

    def make_rollout(records, index):
        drawn.extend(records)
        return [{"i": i} for i in range(s.completions_per_step)], {}

    stream = RolloutStream(_records(), make_rollout, lambda ex: {"examples": ex}, prompts_per_rollout=2,
                           group_size=2, epochs=1, micro_batch_size=4, grad_accum=1, seed=s.seed)
    for _ in range(s.steps):
        next(stream)
    assert [r["prompt"] for r in drawn] == [r["prompt"] for r in grpo.step_prompts(s)]


def _records() -> list[dict]:
    from polm.data.loaders import load_records

    return load_records(grpo.DATA, require_targets=False).records


def test_grpo_trl_options_do_the_same_work_as_polm_and_say_why():
    cpu, cuda = grpo.trl_options(grpo.Settings(), 6), grpo.trl_options(grpo.Settings(device="cuda"), 6)
    assert all(o["why"] for o in cpu.values())
    assert cpu["bf16"]["value"] is False and cuda["bf16"]["value"] is True
    assert cpu["activation_checkpointing"]["value"] is False
    assert (cpu["num_iterations"]["value"], cpu["steps_per_generation"]["value"]) == (1, 1)
    assert cpu["gradient_accumulation_steps"]["value"] == 1 and cpu["beta"]["value"] == 0.0
    assert cpu["generation_kwargs"]["value"] == {"min_new_tokens": 64}
    assert grpo.trl_options(grpo.Settings(fixed_length=False), 6)["generation_kwargs"]["value"] is None


def test_grpo_trl_options_are_valid_grpo_config_fields(tmp_path):
    from trl import GRPOConfig

    options = grpo.trl_options(grpo.Settings(), 6)
    args = GRPOConfig(output_dir=str(tmp_path), **{k: v["value"] for k, v in options.items()})
    assert (args.bf16, args.activation_checkpointing, args.gradient_checkpointing, args.steps_per_generation,
            args.generation_batch_size, args.num_iterations) == (False, False, False, 1, 32, 1)


def test_grpo_polm_overrides_load_as_a_valid_config(tmp_path):
    from polm.config import load_config
    from polm.recipes.grpo import GRPOConfig

    cfg = load_config(GRPOConfig, None, grpo.polm_overrides(grpo.Settings(), 6, tmp_path))
    cfg.validate()
    assert (cfg.train.micro_batch_size, cfg.train.grad_accum, cfg.epochs_per_rollout) == (32, 1, 1)
    assert (cfg.train.precision, cfg.model.dtype, cfg.model.gradient_checkpointing) == ("fp32", "fp32", False)


# --- merge -------------------------------------------------------------------------------------------

def test_merge_compares_a_sharded_output_tensor_by_tensor(tmp_path):
    from safetensors.torch import save_file

    x, y = torch.arange(6.0).reshape(2, 3), torch.ones(4)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    save_file({"x": x, "y": y}, tmp_path / "one" / "model.safetensors")
    save_file({"x": x}, tmp_path / "two" / "model-00001-of-00002.safetensors")
    save_file({"y": y + 0.5}, tmp_path / "two" / "model-00002-of-00002.safetensors")
    out = merge.compare_outputs(tmp_path / "one", tmp_path / "two")
    assert out == {"max_abs_difference": 0.5, "entries_differing": 4, "entries": 10, "shards": 2}


def test_merge_lowmem_side_sets_mergekit_low_memory_options():
    assert merge.mergekit_options("mergekit") == {"quiet": True}
    assert merge.mergekit_options("mergekit-lowmem") == {"quiet": True, "out_shard_size": "100M",
                                                         "lazy_unpickle": True, "low_cpu_memory": True}


def _merge_run(seconds: float, phases: dict[str, float]) -> dict:
    return {"seconds": seconds, "import_seconds": 1.0, "peak_rss_mib": 800.0, "rss_before_mib": 200.0,
            "merge_call": {"peak_mib": 500.0, "peak_delta_mib": 300.0, "method": "VmHWM after clear_refs reset",
                           "phases": [{"name": n, "seconds": 0.1, "peak_mib": 200 + d, "peak_delta_mib": d,
                                       "anon_at_sampled_peak_mib": d, "file_at_sampled_peak_mib": 0.0}
                                      for n, d in phases.items()]}}


def test_merge_tool_figures_report_the_whole_process_the_call_and_each_phase():
    f = merge.tool_figures([_merge_run(2.0, {"plan": 10, "merge": 100}), _merge_run(4.0, {"plan": 30, "merge": 50})])
    assert (f["seconds"], f["peak_rss_mib"], f["merge_peak_delta_mib"], f["merge_rss_growth_mib"]) == \
        (3.0, 800.0, 300.0, 600.0)
    assert f["phases"]["merge"]["peak_delta_mib"] == 75.0 and f["phases"]["plan"]["peak_delta_mib"] == 20.0
    assert merge.merge_phase_delta({"polm": f}, "polm") == 75.0


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory, tiny_tokenizer):
    from conftest import build_tiny_llama

    root = tmp_path_factory.mktemp("bench-merge")
    dirs = []
    for seed, name in enumerate(("base", "ft1", "ft2")):
        build_tiny_llama(len(tiny_tokenizer), seed=seed).save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
        dirs.append(root / name)
    return dirs


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc/self/clear_refs")
def test_merge_worker_measures_each_tools_phases_and_outputs_agree(tiny_inputs, tmp_path):
    polm_cfg, mk_cfg = merge.configs("linear", tiny_inputs, tmp_path)
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    polm = common.run_worker(merge.SCRIPT, {"tool": "polm", "config": polm_cfg, "name": "polm"}, env=env)
    low = common.run_worker(merge.SCRIPT, {"tool": "mergekit-lowmem", "config": mk_cfg, "name": "low",
                                           "out": str(tmp_path / "mergekit-lowmem"),
                                           "options": merge.mergekit_options("mergekit-lowmem")}, env=env)
    assert [p["name"] for p in polm["merge_call"]["phases"]] == ["plan", "merge", "model files", "lineage"]
    assert [p["name"] for p in low["merge_call"]["phases"]] == ["plan", "merge", "tokenizer"]
    for run in (polm, low):
        assert run["merge_call"]["method"] == "VmHWM after clear_refs reset"
        assert run["peak_rss_mib"] >= run["merge_call"]["peak_mib"] > 0
    assert merge.compare_outputs(tmp_path / "polm", tmp_path / "mergekit-lowmem")["max_abs_difference"] < 1e-6


# --- the training workers on a tiny model (fresh processes, as the benches run them) -------------------

WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow   # minutes: two fresh processes importing TRL and training a tiny model
def test_grpo_workers_generate_the_same_prompts_and_token_counts(tiny_model_dir, tmp_path):
    from dataclasses import asdict

    s = grpo.Settings(model=str(tiny_model_dir), steps=2, prompts_per_step=1, group_size=2, max_new_tokens=4,
                      threads=1)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in grpo.step_prompts(s)))
    spec = {"settings": asdict(s), "prompts_path": str(prompts), "steps": s.steps}
    rounds = {side: [common.run_worker(grpo.SCRIPT, {**spec, "side": side}, env=WORKER_ENV)] for side in grpo.SIDES}
    work = grpo.check_same_work(rounds, s)
    assert work["ok"], work["problems"]
    assert work["generated_tokens_per_step"] == {"polm": [[8, 8]], "trl": [[8, 8]]}
    for side in grpo.SIDES:
        steps = rounds[side][0]["steps"]
        assert len(steps) == 2 and all(st["step_s"] >= st["generation_s"] > 0 for st in steps)
    assert rounds["trl"][0]["resolved_args"]["bf16"] is False
    assert rounds["trl"][0]["resolved_args"]["activation_checkpointing"] is False


@pytest.mark.slow   # minutes: two fresh processes importing TRL and training a tiny model
def test_dpo_precompute_workers_run_their_pass_and_start_at_log_2(tiny_model_dir, tiny_tokenizer, tmp_path):
    from dataclasses import asdict

    s = dpo.Settings(steps=2, micro_batch_size=2, ref_batch_size=4)
    pairs = dpo.build_pairs(s)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (tmp_path / "encoded.json").write_text(json.dumps(dpo.encode_for_report(pairs, tiny_tokenizer, s)))
    spec = {"model_dir": str(tiny_model_dir), "device": "cpu", "settings": asdict(s), "threads": 1, "steps": 2,
            "pairs_path": str(tmp_path / "pairs.jsonl"), "encoded_path": str(tmp_path / "encoded.json")}
    for side in ("polm-precompute", "trl-precompute"):
        trial = common.run_worker(dpo.SCRIPT, {**spec, "side": side}, env=WORKER_ENV)
        assert trial["precompute_s"] > 0, side
        assert len(trial["step_wall_s"]) == 2 and len(trial["losses"]) == 2
        assert trial["losses"][0] == pytest.approx(math.log(2), abs=1e-4), side
