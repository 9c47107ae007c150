"""The SliCK probe on a tiny model: shared-prefix sampling equals the unshared path, early exit keeps every
category, teacher forcing equals the product of token probabilities, per-fact seeding, and the cache."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace

import pytest
import torch

import polm.knowledge.probe as probe_mod
from polm.knowledge.probe import (
    ProbeConfig,
    build_prompts,
    cached_probe,
    gold_scores,
    probe_facts,
    validation_report,
)
from polm.rollout import SamplingConfig, build_generator
from polm.rollout.hf import filter_logits

from .conftest import build_spread_llama, pool_facts, year_facts

SMALL = ProbeConfig(n_prompts=3, k_shot=2, n_samples=4, max_new_tokens=4, cache_dir="")


def test_shared_prefix_samples_equal_the_unshared_path(spread_llama, tiny_tokenizer):
    """n samples of one prefilled prompt (KV cache expanded n times) draw the same tokens, with the same
    logprobs (to 1e-5), as the prompt repeated n times with one sample each, under the same seed."""
    gen = build_generator("hf", spread_llama, tiny_tokenizer, prompts_per_batch=64)
    prompts = [tiny_tokenizer(f"Q: When was item {i} made?\nA: 19{i}0\n\nQ: What is {i}?\nA:")["input_ids"]
               for i in range(3)]
    shared = gen.generate(prompts, SamplingConfig(n=16, temperature=0.5, top_k=40, max_new_tokens=6, stop=["\n"]), 3)
    unshared = gen.generate([p for p in prompts for _ in range(16)],
                            SamplingConfig(n=1, temperature=0.5, top_k=40, max_new_tokens=6, stop=["\n"]), 3)
    assert [c.token_ids for c in shared] == [c.token_ids for c in unshared]
    # The prompt's prefill runs at batch 3 on one path and 48 on the other: float sums may differ in the
    # last bits (seen: 2e-6), so logprobs agree to a tolerance; the sampled tokens must be identical.
    for a, b in zip(shared, unshared):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    assert len({tuple(c.token_ids) for c in shared}) > 3   # real sampling, not one repeated answer


def test_greedy_probability_counts_exact_matches(spread_llama, tiny_tokenizer):
    facts = year_facts(3)
    first = probe_facts(spread_llama, tiny_tokenizer, facts, pool_facts(), SMALL)
    assert all(r["p_greedy"] == 0 and r["category"] in ("WeaklyKnown", "Unknown") for r in first)
    # an alias equal to prompt 0's greedy answer: P(T=0) = share of the fact's greedy answers equal to it
    # (aliases change neither the prompts nor the seeds)
    target = first[0]["greedy_answers"][0]
    again = probe_facts(spread_llama, tiny_tokenizer, [{**facts[0], "aliases": [target]}], pool_facts(), SMALL)[0]
    assert again["greedy_answers"] == first[0]["greedy_answers"]
    assert again["p_greedy"] == sum(a == target for a in first[0]["greedy_answers"]) / 3 > 0
    assert again["category"] == ("HighlyKnown" if again["p_greedy"] == 1 else "MaybeKnown")


def fake_correct(prediction: str, fact: dict) -> bool:
    """A fixed 'correct' that mixes the categories: item 4m always (HighlyKnown), item 4m+1 never
    (Unknown), the others for a pseudo-random ~40% of their (answer, fact) pairs."""
    item = int(fact["question"].split()[3])
    if item % 4 in (0, 1):
        return item % 4 == 0
    return hashlib.md5(f"{prediction}|{fact['question']}".encode()).digest()[0] < 100


def test_early_exit_never_changes_a_category(spread_llama, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(probe_mod, "is_correct", fake_correct)
    facts = year_facts(12)
    full = probe_facts(spread_llama, tiny_tokenizer, facts, pool_facts(), SMALL)
    fast = probe_facts(spread_llama, tiny_tokenizer, facts, pool_facts(), replace(SMALL, early_exit=True))
    assert {r["category"] for r in full} == {"HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"}
    assert [r["category"] for r in fast] == [r["category"] for r in full]
    assert [r["p_greedy"] for r in fast] == [r["p_greedy"] for r in full]
    for f, e in zip(full, fast):
        assert f["samples_drawn"] == 12
        # skipped exactly where greedy decides the category; elsewhere the very same samples
        assert (e["samples_drawn"], e["p_sample"]) == ((0, None) if f["p_greedy"] > 0 else (12, f["p_sample"]))


def test_a_facts_results_do_not_depend_on_the_other_facts(spread_llama, tiny_tokenizer):
    facts = year_facts(4)
    every = probe_facts(spread_llama, tiny_tokenizer, facts, pool_facts(), SMALL)
    alone = probe_facts(spread_llama, tiny_tokenizer, facts[2:3], pool_facts(), SMALL)
    assert alone == every[2:3]
    other_seed = probe_facts(spread_llama, tiny_tokenizer, facts, pool_facts(), replace(SMALL, seed=1))
    assert [r["greedy_answers"] for r in other_seed] != [r["greedy_answers"] for r in every]


def test_teacher_forced_probability_is_the_product_of_filtered_token_probabilities(spread_llama, tiny_tokenizer):
    prompts = [tiny_tokenizer(t)["input_ids"] for t in ("Q: When?\nA:", "Q: When was item 3 built, then?\nA:")]
    golds = [tiny_tokenizer(t)["input_ids"] for t in (" 1950", " Paris")]
    T, k = 0.5, 40
    ok, logps = gold_scores(spread_llama, prompts, golds, T, k, pad_id=0)
    for p, g, got_ok, got in zip(prompts, golds, ok, logps):
        with torch.no_grad():   # one unpadded forward per pair, the gold's probabilities read off by hand
            logits = spread_llama(torch.tensor([p + g])).logits[0, len(p) - 1:-1].float()
        probs = filter_logits(logits / T, k, 1.0).softmax(-1)
        expected = math.prod(float(probs[t, tok]) for t, tok in enumerate(g))
        assert math.exp(got) == pytest.approx(expected, rel=1e-4, abs=1e-30)
        assert got_ok == all(int(logits[t].argmax()) == tok for t, tok in enumerate(g))
    # the greedy continuation itself: every token is the argmax, and its probability is positive
    gen = build_generator("hf", spread_llama, tiny_tokenizer)
    greedy = gen.generate(prompts[:1], SamplingConfig(n=1, temperature=0, max_new_tokens=3), 0)[0].token_ids
    ok, logps = gold_scores(spread_llama, prompts[:1], [greedy], T, k, pad_id=0)
    assert ok == [True] and logps[0] > -math.inf


def test_teacher_forced_method_and_its_validation(spread_llama, tiny_tokenizer):
    facts = year_facts(4)
    facts[1] = {**facts[1], "aliases": ["1951.", "fifty-one"]}
    cfg = replace(SMALL, method="teacher_forced", validate_facts=3)
    tf = probe_facts(spread_llama, tiny_tokenizer, facts, pool_facts(), cfg)
    # by hand for fact 1: per prompt the best of its three golds, averaged over the 3 prompts
    prompts = build_prompts(facts, pool_facts(), cfg)[1]
    golds = [" 1951", " 1951.", " fifty-one"]
    ids = [tiny_tokenizer(p)["input_ids"] for p in prompts for _ in golds]
    ok, logps = gold_scores(spread_llama, ids, [tiny_tokenizer(g)["input_ids"] for _ in prompts for g in golds],
                            0.5, 40, pad_id=0)
    best = [max(math.exp(lp) for lp in logps[j * 3:(j + 1) * 3]) for j in range(3)]
    assert tf[1]["p_sample"] == pytest.approx(sum(best) / 3, rel=1e-5)
    assert tf[1]["p_greedy"] == sum(any(ok[j * 3:(j + 1) * 3]) for j in range(3)) / 3
    threshold = 1 / (3 * 4)   # one correct answer expected among n_prompts x n_samples
    for r in tf:
        if r["p_greedy"] == 0:
            assert r["category"] == ("WeaklyKnown" if r["p_sample"] >= threshold else "Unknown")
    assert all(0 <= r["p_sample"] <= 1 for r in tf)
    assert [("sampling_category" in r) for r in tf] == [True, True, True, False]
    report = validation_report(tf)
    agree = sum(r["sampling_category"] == r["category"] for r in tf[:3]) / 3
    assert report["facts"] == 3 and report["agreement"] == pytest.approx(agree)
    assert sum(sum(row.values()) for row in report["matrix_sampling_to_teacher_forced"].values()) == 3


def test_cache_hits_and_misses(tmp_path, tiny_tokenizer, monkeypatch):
    model_dir = tmp_path / "model"
    build_spread_llama(len(tiny_tokenizer)).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    cfg = replace(SMALL, cache_dir=str(tmp_path / "cache"))
    facts, pool = year_facts(2), pool_facts()
    first, hit = cached_probe(str(model_dir), facts, pool, cfg)
    assert not hit and len(list((tmp_path / "cache").glob("probe-*.jsonl"))) == 1
    calls = []
    real = probe_mod.probe_facts
    monkeypatch.setattr(probe_mod, "probe_facts", lambda *a: calls.append(1) or real(*a))
    again, hit = cached_probe(str(model_dir), facts, pool, cfg)
    assert hit and again == first and calls == []
    assert not cached_probe(str(model_dir), facts, pool, replace(cfg, seed=1))[1]            # settings
    assert not cached_probe(str(model_dir), facts[:1], pool, cfg)[1]                         # data
    assert not cached_probe(str(model_dir), facts, pool[:-1], cfg)[1]                        # exemplar pool
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert not cached_probe(str(model_dir), facts, pool, cfg)[1]                             # model
    assert len(calls) == 4
    assert cached_probe(str(model_dir), facts, pool, replace(cfg, cache_dir=str(tmp_path / "cache")))[1]
