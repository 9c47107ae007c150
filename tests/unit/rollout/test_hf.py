"""The transformers generation backend: agrees with HF generate, returns the true sampling logprobs, is seeded."""


import pytest
import torch

from polm.errors import PolmError
from polm.ops import token_logprobs
from polm.rollout import HFGenerator, SamplingConfig
from polm.rollout.hf import filter_logits

PROMPTS = ["What is 12 + 7?", "Hello", "Calculate 5 - 3 - 6. The quick brown fox"]


def _prompt_ids(tok):
    return [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def _sharpen(model):
    """The tiny model with weights x4: its greedy continuations vary with the context and position (the
    random-init one mostly repeats the last token), so an unmasked pad or a wrong decode position shows
    in the tokens (a constant per-row position offset would not: rotary attention is shift-invariant)."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model


def _hf_greedy(model, tok, max_new_tokens: int, eos_token_id):
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=eos_token_id)
    return out[:, enc["input_ids"].shape[1]:].tolist()


def test_greedy_matches_hf_generate_on_left_padded_prompts(tiny_llama, tiny_tokenizer):
    ids = _prompt_ids(tiny_tokenizer)
    gen = HFGenerator(tiny_llama, tiny_tokenizer)
    gen.eos_ids = torch.tensor([-1])           # never stop early: compare all 8 tokens
    got = gen.generate(ids, SamplingConfig(n=2, max_new_tokens=8, temperature=0.0), seed=0)
    tiny_tokenizer.padding_side = "left"
    enc = tiny_tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    ref = tiny_llama.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tiny_tokenizer.pad_token_id,
                              eos_token_id=None)[:, enc["input_ids"].shape[1]:]
    for i in range(len(PROMPTS)):
        for j in range(2):
            assert got[2 * i + j].prompt_index == i
            assert got[2 * i + j].token_ids == ref[i].tolist()


def test_sampling_logprobs_equal_a_full_forward_at_the_temperature(tiny_llama, tiny_tokenizer):
    ids = _prompt_ids(tiny_tokenizer)
    gen = HFGenerator(tiny_llama, tiny_tokenizer)
    temperature = 0.7
    comps = gen.generate(ids, SamplingConfig(n=3, max_new_tokens=6, temperature=temperature, top_k=50), seed=3)
    assert len(comps) == 9
    for c in comps:
        full = torch.tensor([ids[c.prompt_index] + c.token_ids])
        with torch.no_grad():
            logits = tiny_llama(full).logits[:, :-1] / temperature
        targets = full[:, 1:].clone()
        targets[:, :len(ids[c.prompt_index]) - 1] = -100
        expected = token_logprobs(logits, targets)[0, len(ids[c.prompt_index]) - 1:]
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-5, rtol=1e-5)


def test_same_seed_same_rollouts_and_global_rng_untouched(tiny_llama, tiny_tokenizer):
    ids = _prompt_ids(tiny_tokenizer)
    gen = HFGenerator(tiny_llama, tiny_tokenizer)
    s = SamplingConfig(n=4, max_new_tokens=5, temperature=1.0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = [c.token_ids for c in gen.generate(ids, s, seed=7)]
    assert torch.equal(torch.get_rng_state(), before)
    assert a == [c.token_ids for c in gen.generate(ids, s, seed=7)]
    assert a != [c.token_ids for c in gen.generate(ids, s, seed=8)]


def test_eos_ends_a_completion_and_is_kept(tiny_llama, tiny_tokenizer):
    ids = _prompt_ids(tiny_tokenizer)[:1]
    gen = HFGenerator(tiny_llama, tiny_tokenizer)
    gen.eos_ids = torch.tensor([-1])
    free = gen.generate(ids, SamplingConfig(n=1, max_new_tokens=6, temperature=0.0), seed=0)[0]
    gen.eos_ids = torch.tensor([free.token_ids[2]])     # pretend the third greedy token is EOS
    stopped = gen.generate(ids, SamplingConfig(n=1, max_new_tokens=6, temperature=0.0), seed=0)[0]
    first = free.token_ids.index(free.token_ids[2])
    assert stopped.token_ids == free.token_ids[:first + 1]
    assert (stopped.finish_reason, free.finish_reason) == ("stop", "length")


def test_stop_string_cuts_text_and_ends_generation(tiny_llama, tiny_tokenizer):
    ids = _prompt_ids(tiny_tokenizer)[:1]
    gen = HFGenerator(tiny_llama, tiny_tokenizer)
    gen.eos_ids = torch.tensor([-1])
    free = gen.generate(ids, SamplingConfig(n=1, max_new_tokens=8, temperature=0.0), seed=0)[0]
    stop = tiny_tokenizer.decode(free.token_ids[3:5])
    cut = gen.generate(ids, SamplingConfig(n=1, max_new_tokens=8, temperature=0.0, stop=[stop]), seed=0)[0]
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert free.text.startswith(cut.text) and len(cut.token_ids) <= 5


def test_filter_logits_top_k_and_top_p_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])     # probs .644 .237 .087 .032
    inf = float("-inf")
    assert filter_logits(logits, 2, 1.0).tolist() == [[2.0, 1.0, inf, inf]]
    assert filter_logits(logits, 0, 0.5).tolist() == [[2.0, inf, inf, inf]]
    assert filter_logits(logits, 0, 0.7).tolist() == [[2.0, 1.0, inf, inf]]


def test_bad_settings_are_explained(tiny_llama, tiny_tokenizer):
    gen = HFGenerator(tiny_llama, tiny_tokenizer)
    with pytest.raises(PolmError, match="top_p"):
        gen.generate([[5]], SamplingConfig(top_p=0.0), seed=0)


def test_greedy_matches_hf_generate_on_a_context_sensitive_model(tiny_llama, tiny_tokenizer):
    """Left-padded prompts of different lengths, n = 3 per prompt: every sample is HF's greedy row."""
    model = _sharpen(tiny_llama)
    gen = HFGenerator(model, tiny_tokenizer)
    gen.eos_ids = torch.tensor([-1])
    ref = _hf_greedy(model, tiny_tokenizer, 10, None)
    assert len({tuple(r) for r in ref}) == len(PROMPTS) and all(len(set(r)) > 3 for r in ref)
    got = gen.generate(_prompt_ids(tiny_tokenizer), SamplingConfig(n=3, max_new_tokens=10, temperature=0.0), seed=0)
    assert [c.token_ids for c in got] == [r for r in ref for _ in range(3)]
    assert {c.finish_reason for c in got} == {"length"}


def test_greedy_matches_hf_generate_when_rows_end_early(tiny_llama, tiny_tokenizer):
    """A row that hits EOS leaves the batch; the others go on exactly as in HF generate (which pads
    finished rows instead). Each completion is HF's row up to and including its first EOS."""
    model = _sharpen(tiny_llama)
    free = _hf_greedy(model, tiny_tokenizer, 10, None)
    eos = free[1][3]                                    # the 4th token of prompt 1 ends it there
    ref = _hf_greedy(model, tiny_tokenizer, 10, eos)
    gen = HFGenerator(model, tiny_tokenizer, prompts_per_batch=2)   # also across two batches
    gen.eos_ids = torch.tensor([eos])
    got = gen.generate(_prompt_ids(tiny_tokenizer), SamplingConfig(n=2, max_new_tokens=10, temperature=0.0), seed=0)
    want = [row[:row.index(eos) + 1] if eos in row else row for row in ref]
    assert len(want[1]) <= 4 and any(len(w) == 10 for w in want)
    assert [c.token_ids for c in got] == [w for w in want for _ in range(2)]
    assert [c.finish_reason for c in got[::2]] == ["stop" if eos in w else "length" for w in want]


def test_top_k_1_and_a_tiny_top_p_sample_the_greedy_tokens(tiny_llama, tiny_tokenizer):
    """Both filters keep only the argmax, so sampling at any temperature must give the greedy tokens."""
    model = _sharpen(tiny_llama)
    gen = HFGenerator(model, tiny_tokenizer)
    gen.eos_ids = torch.tensor([-1])
    ids = _prompt_ids(tiny_tokenizer)
    greedy = [c.token_ids for c in gen.generate(ids, SamplingConfig(n=2, max_new_tokens=8, temperature=0.0), 0)]
    for filters in ({"top_k": 1}, {"top_p": 1e-6}):
        sampled = gen.generate(ids, SamplingConfig(n=2, max_new_tokens=8, temperature=1.5, **filters), seed=4)
        assert [c.token_ids for c in sampled] == greedy


def test_eos_comes_from_tokenizer_model_and_generation_configs(tiny_llama, tiny_tokenizer):
    tiny_llama.generation_config.eos_token_id = [2, 7]
    tiny_llama.config.eos_token_id = 9
    assert HFGenerator(tiny_llama, tiny_tokenizer).eos_ids.tolist() == [2, 7, 9]


def test_min_new_tokens_never_draws_eos_early_and_scores_under_the_unmasked_policy(tiny_llama, tiny_tokenizer):
    """A model that always wants EOS: with min_new_tokens=5 every completion is exactly 5 tokens of
    non-EOS, and their log-probabilities are the unmasked policy's (those the training forward computes)."""
    from polm.rollout import SamplingConfig
    from polm.rollout.hf import HFGenerator

    eos = tiny_tokenizer.eos_token_id
    with torch.no_grad():
        tiny_llama.lm_head.weight[eos] += 50.0   # tied: EOS dominates every next-token distribution
    gen = HFGenerator(tiny_llama, tiny_tokenizer)
    prompts = [tiny_tokenizer("hello there")["input_ids"], tiny_tokenizer("12 + 7")["input_ids"]]
    free = gen.generate(prompts, SamplingConfig(n=2, max_new_tokens=5, temperature=1.0), seed=0)
    assert all(c.token_ids == [eos] for c in free)
    fixed = gen.generate(prompts, SamplingConfig(n=2, max_new_tokens=5, temperature=1.0, min_new_tokens=5), seed=0)
    assert all(len(c.token_ids) == 5 and eos not in c.token_ids for c in fixed)
    c = fixed[0]
    with torch.no_grad():
        logits = tiny_llama(torch.tensor([prompts[0] + c.token_ids])).logits[0, len(prompts[0]) - 1:-1]
    expected = logits.float().log_softmax(-1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_min_new_tokens_is_validated():
    from polm.errors import PolmError
    from polm.rollout import SamplingConfig

    with pytest.raises(PolmError, match="min_new_tokens=9 must be in"):
        SamplingConfig(max_new_tokens=8, min_new_tokens=9).validate()


# Tokens of the sampler before the preallocated KV cache and the per-step changes (polm at fb4cc5a),
# on the sharpened tiny model: SamplingConfig(n=3, max_new_tokens=10, temperature=0.8, top_k=40,
# top_p=0.95, min_new_tokens=2), seed 11, token 245 as EOS, two prompts per batch.
BEFORE = [[221, 93, 264, 19, 300, 311, 245], [86, 54, 288, 393, 393, 245], [86, 100, 360, 245],
          [26, 184, 355, 327, 318, 165, 124, 236, 293, 250], [45, 358, 176, 280, 331, 69, 328, 305, 290, 302],
          [169, 136, 48, 214, 328, 242, 227, 47, 96, 378], [376, 269, 125, 150, 334, 94, 37, 251, 48, 134],
          [91, 284, 88, 53, 350, 86, 391, 197, 250, 88], [381, 104, 122, 134, 47, 365, 301, 151, 42, 260]]


@pytest.mark.parametrize("kv_cache", ["preallocated", "dynamic"])
def test_seeded_sampling_gives_the_tokens_of_the_sampler_before(tiny_llama, tiny_tokenizer, kv_cache):
    """Same seed, same tokens as before (rows ending at EOS at different steps, top-k + top-p, T != 1,
    min_new_tokens), and the first row's logprobs as recorded then."""
    gen = HFGenerator(_sharpen(tiny_llama), tiny_tokenizer, prompts_per_batch=2, kv_cache=kv_cache)
    gen.eos_ids = torch.tensor([245])
    s = SamplingConfig(n=3, max_new_tokens=10, temperature=0.8, top_k=40, top_p=0.95, min_new_tokens=2)
    got = gen.generate(_prompt_ids(tiny_tokenizer), s, seed=11)
    assert [c.token_ids for c in got] == BEFORE
    assert [c.finish_reason for c in got] == ["stop"] * 3 + ["length"] * 6
    expected = [-4.568174, -1.934157, -4.421923, -0.092636, -3.616646, -4.489311, -3.122592]
    assert got[0].logprobs == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0),
                                      dict(temperature=0.7, top_p=0.9, min_new_tokens=3)])
def test_preallocated_and_dynamic_caches_give_identical_completions(tiny_llama, tiny_tokenizer, sampling):
    """Bit for bit: tokens, logprobs and finish reasons, with rows leaving the batch early."""
    model = _sharpen(tiny_llama)
    ids = _prompt_ids(tiny_tokenizer)
    runs = []
    for kv_cache in ("preallocated", "dynamic"):
        gen = HFGenerator(model, tiny_tokenizer, kv_cache=kv_cache)
        gen.eos_ids = torch.tensor([245, 48])
        runs.append(gen.generate(ids, SamplingConfig(n=4, max_new_tokens=12, **sampling), seed=3))
    assert [(c.token_ids, c.logprobs, c.finish_reason) for c in runs[0]] == \
        [(c.token_ids, c.logprobs, c.finish_reason) for c in runs[1]]
    assert {c.finish_reason for c in runs[0]} == {"stop", "length"} or sampling["temperature"] == 0.0


def test_an_unknown_kv_cache_is_explained(tiny_llama, tiny_tokenizer):
    with pytest.raises(PolmError, match="kv_cache"):
        HFGenerator(tiny_llama, tiny_tokenizer, kv_cache="static")
