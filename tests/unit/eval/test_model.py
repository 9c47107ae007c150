"""ModelAdapter: loglikelihood equals hand-summed token logprobs; generation equals a plain greedy loop."""

from __future__ import annotations

import copy

import pytest
import torch

from polm.errors import PolmError
from polm.eval.model import ModelAdapter, _Row

REQUESTS = [
    ("What is 12 + 7?", " The answer is 19."),
    ("Calculate 5 - 3 - 6.", " Answer: -4"),
    ("The quick brown fox jumps over the lazy", " dog."),
    ("Paris", " is the capital of France."),
]


def hand_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """Σ log_softmax(logits)[t, x_{t+1}] over the continuation tokens, one unpadded sequence."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
    total, greedy = 0.0, True
    for t in range(len(ctx), len(whole)):
        total += float(logp[t - 1, whole[t]])
        greedy &= int(logp[t - 1].argmax()) == whole[t]
    return total, greedy


@pytest.mark.parametrize("batch_size", [1, 3])
def test_loglikelihood_equals_hand_sum(tiny_llama, tiny_tokenizer, batch_size):
    adapter = ModelAdapter(tiny_llama, tiny_tokenizer, batch_size=batch_size)
    got = adapter.loglikelihood(REQUESTS)
    for (ctx, cont), (lp, greedy) in zip(REQUESTS, got):
        want_lp, want_greedy = hand_loglikelihood(tiny_llama, tiny_tokenizer, ctx, cont)
        assert lp == pytest.approx(want_lp, abs=1e-4)
        assert greedy == want_greedy
        assert lp < 0


def test_shared_context_scoring_equals_hand_sums(tiny_llama, tiny_tokenizer):
    # Four continuations of one context (multiple choice) take the KV-cache path; lengths differ so
    # the continuation batch is right-padded.
    context = "Question: What is 12 + 7?\nAnswer:"
    conts = [" (A)", " 19", " The answer is 19.", " -4"]
    adapter = ModelAdapter(tiny_llama, tiny_tokenizer, batch_size=2)
    rows = [adapter._encode_pair(context, c) for c in conts]
    assert len({tuple(r.context) for r in rows}) == 1
    got = adapter.loglikelihood([(context, c) for c in conts])
    for cont, (lp, greedy) in zip(conts, got):
        want_lp, want_greedy = hand_loglikelihood(tiny_llama, tiny_tokenizer, context, cont)
        assert lp == pytest.approx(want_lp, abs=1e-4) and greedy == want_greedy


def test_shared_contexts_of_different_lengths_in_one_batch(tiny_llama, tiny_tokenizer):
    # Two contexts (left-padded against each other) with three continuations each, plus a lone
    # request that takes the ordinary path.
    requests = [(ctx, cont) for ctx in ("Paris", "You are a helpful assistant. What is 12 + 7?")
                for cont in (" is", " The answer is 19.", " 7")] + [("hello", " world")]
    got = ModelAdapter(tiny_llama, tiny_tokenizer, batch_size=4).loglikelihood(requests)
    for (ctx, cont), (lp, greedy) in zip(requests, got):
        want_lp, want_greedy = hand_loglikelihood(tiny_llama, tiny_tokenizer, ctx, cont)
        assert lp == pytest.approx(want_lp, abs=1e-4) and greedy == want_greedy


def test_greedy_flag_follows_the_argmax(tiny_llama, tiny_tokenizer):
    adapter = ModelAdapter(tiny_llama, tiny_tokenizer)
    ids = tiny_tokenizer("What is", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        order = tiny_llama(torch.tensor([ids])).logits[0, -1].argsort(descending=True).tolist()
    best, other = adapter._score_rows([_Row(ids, [order[0]]), _Row(ids, [order[1]])])
    assert best[1] is True and other[1] is False
    assert best[0] > other[0]


def test_trailing_space_moves_to_continuation(tiny_llama, tiny_tokenizer):
    adapter = ModelAdapter(tiny_llama, tiny_tokenizer)
    [(a, _)] = adapter.loglikelihood([("Answer:", " 19")])
    [(b, _)] = adapter.loglikelihood([("Answer: ", "19")])
    assert a == pytest.approx(b, abs=1e-6)


def test_rolling_windows(tiny_llama, tiny_tokenizer):
    text = "The quick brown fox jumps over the lazy dog."
    toks = [tiny_tokenizer.bos_token_id, *tiny_tokenizer(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_llama(torch.tensor([toks])).logits[0].double(), -1)
    want_full = sum(float(logp[t - 1, toks[t]]) for t in range(1, len(toks)))
    [(lp, n)] = ModelAdapter(tiny_llama, tiny_tokenizer).loglikelihood_rolling([text])
    assert n == len(toks) - 1 and lp == pytest.approx(want_full, abs=1e-4)

    # max_length 4: window 1 scores toks[1:5] from toks[0:1]; window 2 scores toks[5:9] from toks[1:5] ...
    small = ModelAdapter(tiny_llama, tiny_tokenizer, max_length=4)
    [(lp_small, n_small)] = small.loglikelihood_rolling([text])
    want = 0.0
    for start in range(1, len(toks), 4):
        cont = toks[start:start + 4]
        seq = toks[max(0, start - 5 + len(cont)):start + len(cont)]
        with torch.no_grad():
            lps = torch.log_softmax(tiny_llama(torch.tensor([seq])).logits[0].double(), -1)
        off = len(seq) - len(cont)
        want += sum(float(lps[off + j - 1, cont[j]]) for j in range(len(cont)))
    assert n_small == len(toks) - 1 and lp_small == pytest.approx(want, abs=1e-4)


def plain_greedy(model, tok, text: str, steps: int) -> str:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
    return tok.decode(out, skip_special_tokens=True)


def test_generate_matches_plain_greedy_loop_under_left_padding(tiny_llama, tiny_tokenizer):
    adapter = ModelAdapter(tiny_llama, tiny_tokenizer, batch_size=2, chat="false")
    prompts = ["Paris", "You are a helpful assistant. What is 12 + 7?"]
    got = adapter.generate(prompts, max_new_tokens=6)
    for prompt, completions in zip(prompts, got):
        assert completions == [plain_greedy(tiny_llama, tiny_tokenizer, prompt, 6)]


def test_generate_applies_chat_template(tiny_llama, tiny_tokenizer):
    adapter = ModelAdapter(tiny_llama, tiny_tokenizer, chat="auto")
    text = adapter.format_prompt("hello")
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    [[got]] = adapter.generate(["hello"], max_new_tokens=5)
    assert got == plain_greedy(tiny_llama, tiny_tokenizer, text, 5)


def test_generate_stop_strings_and_sampling(tiny_llama, tiny_tokenizer):
    adapter = ModelAdapter(tiny_llama, tiny_tokenizer, chat="false")
    [[full]] = adapter.generate(["Paris"], max_new_tokens=12)
    assert len(full) > 2
    stop = full[2:4]
    [[cut]] = adapter.generate(["Paris"], max_new_tokens=12, stop=[stop])
    assert cut == full[:full.find(stop)]
    a = adapter.generate(["Paris", "hello"], max_new_tokens=8, temperature=1.0, n=3, seed=7)
    b = adapter.generate(["Paris", "hello"], max_new_tokens=8, temperature=1.0, n=3, seed=7)
    assert a == b and [len(x) for x in a] == [3, 3]


def test_chat_true_without_template_is_an_error(tiny_llama, tiny_tokenizer):
    plain = copy.deepcopy(tiny_tokenizer)
    plain.chat_template = None
    with pytest.raises(PolmError, match="no chat template"):
        ModelAdapter(tiny_llama, plain, chat="true")
    assert ModelAdapter(tiny_llama, plain, chat="auto").format_prompt("hi") == "hi"
