"""generate_text: prompts as text or messages -> n completions each, in order, through any Generator."""

import torch

from polm.data.templating import format_prompt
from polm.rollout import Completion, HFGenerator, SamplingConfig
from polm.rollout.text import generate_text

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Calculate 5 - 3 - 6."}]


class Recorder:
    """A Generator that records what it was asked and answers 'prompt i sample j' (in a shuffled order)."""

    def __init__(self):
        self.calls = []

    def generate(self, prompt_ids, sampling, seed, on_progress=None):
        self.calls.append((prompt_ids, sampling, seed))
        out = [Completion(i, [], [], f"p{i}s{j}", "length") for j in range(sampling.n) for i in range(len(prompt_ids))]
        if on_progress is not None:
            on_progress(len(prompt_ids))
        return out

    def sync_weights(self):
        return None


def test_n_completions_per_prompt_in_order_and_settings_passed_through(tiny_tokenizer):
    gen, sampling = Recorder(), SamplingConfig(n=3, max_new_tokens=4)
    got = generate_text(gen, tiny_tokenizer, ["a", "b"], sampling, seed=11)
    assert got == [["p0s0", "p0s1", "p0s2"], ["p1s0", "p1s1", "p1s2"]]
    assert gen.calls[0][1] is sampling and gen.calls[0][2] == 11
    assert generate_text(gen, tiny_tokenizer, [], sampling, seed=0) == [] and len(gen.calls) == 1


def test_chat_template_on_and_off(tiny_tokenizer):
    gen = Recorder()
    generate_text(gen, tiny_tokenizer, ["hello", MESSAGES], SamplingConfig(n=1), seed=0)
    generate_text(gen, tiny_tokenizer, ["hello", MESSAGES], SamplingConfig(n=1), seed=0, chat=False)
    (templated, _, _), (plain, _, _) = gen.calls
    assert tiny_tokenizer.decode(templated[0]) == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert tiny_tokenizer.decode(templated[1]) == format_prompt(tiny_tokenizer, MESSAGES, True)
    assert [tiny_tokenizer.decode(ids) for ids in plain] == ["hello", "Be brief.\nCalculate 5 - 3 - 6."]
    assert templated[0] == tiny_tokenizer(tiny_tokenizer.decode(templated[0]), add_special_tokens=False)["input_ids"]


def plain_greedy(model, tok, text: str, steps: int) -> list[int]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(steps):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
    return out


def test_greedy_text_equals_an_unbatched_loop_and_stop_strings_cut(tiny_llama, tiny_tokenizer):
    with torch.no_grad():
        for p in tiny_llama.parameters():
            p.mul_(4)                                   # context-sensitive continuations
    gen = HFGenerator(tiny_llama, tiny_tokenizer, prompts_per_batch=2)
    prompts = ["What is 12 + 7?", "hello", MESSAGES]
    greedy = SamplingConfig(n=2, max_new_tokens=8, temperature=0.0)
    got = generate_text(gen, tiny_tokenizer, prompts, greedy, seed=0)
    want = [tiny_tokenizer.decode(plain_greedy(tiny_llama, tiny_tokenizer, format_prompt(tiny_tokenizer, p, True), 8),
                                  skip_special_tokens=True) for p in prompts]
    assert got == [[w, w] for w in want]
    assert len(want[0]) > 4
    stop = want[0][2:4]
    cut = generate_text(gen, tiny_tokenizer, prompts, SamplingConfig(n=1, max_new_tokens=8, temperature=0.0,
                                                                      stop=[stop]), seed=0)
    assert cut[0] == [want[0][:want[0].find(stop)]]
    assert [c[0] for c in cut[1:]] == [w[:w.find(stop)] if stop in w else w for w in want[1:]]


def test_progress_bar_changes_nothing(tiny_llama, tiny_tokenizer):
    gen = HFGenerator(tiny_llama, tiny_tokenizer, prompts_per_batch=1)
    s = SamplingConfig(n=2, max_new_tokens=5, temperature=1.0)
    a = generate_text(gen, tiny_tokenizer, ["hello", "Paris"], s, seed=3, progress=True)
    assert a == generate_text(gen, tiny_tokenizer, ["hello", "Paris"], s, seed=3)
    assert a != generate_text(gen, tiny_tokenizer, ["hello", "Paris"], s, seed=4)
