"""The transformers rollout engine: agrees with HF generate, returns the true sampling logprobs, is seeded."""

import sys

import pytest
import torch

from polm.errors import PolmError
from polm.ops import token_logprobs
from polm.rollout import HFGenerator, SamplingConfig, build_generator
from polm.rollout.hf import filter_logits

PROMPTS = ["What is 12 + 7?", "Hello", "Calculate 5 - 3 - 6. The quick brown fox"]


def _prompt_ids(tok):
    return [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


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


def test_bad_settings_and_backend_are_explained(tiny_llama, tiny_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)     # as on a machine without vLLM
    gen = HFGenerator(tiny_llama, tiny_tokenizer)
    with pytest.raises(PolmError, match="top_p"):
        gen.generate([[5]], SamplingConfig(top_p=0.0), seed=0)
    with pytest.raises(PolmError, match="Did you mean 'hf'"):
        build_generator("hff", tiny_llama, tiny_tokenizer)
    with pytest.raises(PolmError, match="pip install"):
        build_generator("vllm", tiny_llama, tiny_tokenizer, model_path="x")
