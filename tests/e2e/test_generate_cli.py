"""`polm generate` and `polm chat` on a tiny model: same tokens as plain transformers greedy decoding; the
recorded prompt format (suffix, end-of-turn stop) applied by default and carried through `polm export`."""

from __future__ import annotations

import io
import json

import pytest
import torch

from polm.cli import main
from polm.data.templating import PROMPT_FORMAT_FILE, TrainedPromptFormat, trained_prompt_format
from polm.models.save import save_pretrained_atomic


def reference_greedy(model_dir, prompt: str, max_new_tokens: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_generate_batched_greedy_matches_unbatched_transformers(tiny_model_dir, tmp_path, capsys):
    prompts = ["What is 12 + 7?", "hello", "Calculate 5 - 3 - 6."]  # different lengths: left padding matters
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text(json.dumps({"messages": [{"role": "user", "content": prompts[2]}]}) + "\n")
    out_file = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(tiny_model_dir), "--max-new-tokens", "6", "--out", str(out_file),
            "--prompt", prompts[0], "--prompt", prompts[1], "--file", str(prompt_file)]
    assert main(args) == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["completions"][0] for r in rows] == [reference_greedy(tiny_model_dir, p, 6) for p in prompts]
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_generate_sampling_is_seeded(tiny_model_dir, tmp_path):
    def sample(seed: int) -> list[str]:
        out = tmp_path / f"s{seed}.jsonl"
        assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "hello", "--temperature", "1.0",
                     "--num-samples", "3", "--max-new-tokens", "8", "--seed", str(seed), "--out", str(out)]) == 0
        return json.loads(out.read_text())["completions"]

    first = sample(1)
    assert len(first) == 3 and sample(1) == first and sample(2) != first


def test_generate_without_prompts_is_one_clear_line(tiny_model_dir, capsys):
    assert main(["generate", "--model", str(tiny_model_dir)]) == 2
    assert "no prompts given" in capsys.readouterr().err


def test_chat_keeps_history_and_resets(tiny_model_dir, monkeypatch, capsys):
    import polm.chat

    seen: list[list[dict]] = []
    real_generate_text = polm.chat.generate_text

    def spy(generator, tokenizer, prompts, sampling, **kwargs):
        seen.append([dict(m) for m in prompts[0]])
        return real_generate_text(generator, tokenizer, prompts, sampling, **kwargs)

    monkeypatch.setattr(polm.chat, "generate_text", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 12 + 7?\nthanks\n/reset\nhello\n/exit\n"))
    assert main(["chat", "--model", str(tiny_model_dir), "--max-new-tokens", "5", "--system", "Be brief."]) == 0
    first_reply = reference_greedy(tiny_model_dir, "What is 12 + 7?", 5).strip()
    assert [len(m) for m in seen] == [2, 4, 2]          # system+user; + assistant + user; reset keeps system
    assert seen[1][2] == {"role": "assistant", "content": first_reply}
    assert seen[2] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]


# --- the recorded prompt format ----------------------------------------------------------------

SUFFIX = "Give the final answer on the last line as 'Answer: <answer>'."


@pytest.fixture(scope="module")
def sft_final(tiny_model_dir, tmp_path_factory):
    """`polm sft` (LoRA, 2 steps) on prompt/completion records with `data.prompt_suffix`: its final/."""
    tmp = tmp_path_factory.mktemp("sft-format")
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + 7?", "completion": f"Answer: {i + 7}"}) + "\n"
                            for i in range(8)))
    out = tmp / "run"
    assert main(["sft", f"model.name={tiny_model_dir}", f"data.train={data}", f"output_dir={out}",
                 f"data.prompt_suffix={json.dumps(SUFFIX)}", "train.max_steps=2", "train.micro_batch_size=4",
                 "train.progress=false", "train.tensorboard=false", "data.max_length=64", "lora.r=4"]) == 0
    return out / "final"


def spy_texts(monkeypatch, module) -> list[list]:
    """Record the prompts (and chat flag) `module` hands to generate_text."""
    seen: list[list] = []
    real = module.generate_text

    def spy(generator, tokenizer, prompts, sampling, **kwargs):
        seen.append([list(prompts), kwargs["chat"], list(sampling.stop)])
        return real(generator, tokenizer, prompts, sampling, **kwargs)

    monkeypatch.setattr(module, "generate_text", spy)
    return seen


def test_sft_records_the_prompt_format_it_trained_with(sft_final, tiny_tokenizer):
    recorded = json.loads((sft_final / PROMPT_FORMAT_FILE).read_text())
    assert recorded == {"chat": True, "suffix": SUFFIX, "system": None, "stop": ["<|im_end|>"],
                        "end_of_turn": "<|im_end|>"}
    assert TrainedPromptFormat.read(sft_final) == trained_prompt_format(tiny_tokenizer, chat=True, suffix=SUFFIX)
    assert "## Prompt format" in (sft_final / "README.md").read_text()


def test_generate_applies_the_recorded_format_unless_told_not_to(sft_final, tiny_tokenizer, monkeypatch, capsys):
    import polm.generate

    seen = spy_texts(monkeypatch, polm.generate)
    args = ["generate", "--model", str(sft_final), "--prompt", "Calculate 12 + 7.", "--max-new-tokens", "3"]
    assert main(args) == 0
    assert "applying the prompt format recorded in" in capsys.readouterr().err
    assert main([*args, "--no-prompt-format", "--stop", "\n"]) == 0
    assert "prompt format" not in capsys.readouterr().err
    chat = tiny_tokenizer.apply_chat_template([{"role": "user", "content": f"Calculate 12 + 7.\n{SUFFIX}"}],
                                              tokenize=False, add_generation_prompt=True)
    # the recorded end-of-turn is a special token: it stops by id (an eos id), not as a text stop string
    assert seen == [[[chat], False, []], [["Calculate 12 + 7."], True, ["\n"]]]


def test_chat_applies_the_recorded_suffix_to_the_user_turn(sft_final, monkeypatch, capsys):
    import polm.chat

    seen = spy_texts(monkeypatch, polm.chat)
    monkeypatch.setattr("sys.stdin", io.StringIO("Calculate 12 + 7.\n/exit\n"))
    assert main(["chat", "--model", str(sft_final), "--max-new-tokens", "3"]) == 0
    [[[text], chat, _]] = seen
    assert not chat and text.endswith(f"user\nCalculate 12 + 7.\n{SUFFIX}<|im_end|>\n<|im_start|>assistant\n")
    assert "applying the prompt format" in capsys.readouterr().err


def test_export_keeps_the_recorded_format(sft_final, tmp_path):
    out = tmp_path / "merged"
    assert main(["export", "--model", str(sft_final), "--out", str(out)]) == 0
    assert TrainedPromptFormat.read(out) == TrainedPromptFormat.read(sft_final)
    assert (out / PROMPT_FORMAT_FILE).read_text() == (sft_final / PROMPT_FORMAT_FILE).read_text()
    assert "## Prompt format" in (out / "README.md").read_text()


@pytest.fixture()
def end_of_turn_model(tmp_path):
    """A tiny model whose greedy choice is always <|im_end|> (id 2), with eos <|endoftext|> (id 0), so
    only the recorded end-of-turn can stop it: attention and MLP write nothing, every token embeds to
    ones except <|im_end|> to twos, so logits = norm(ones)·E_v = 32 for v != 2 and 64 for v = 2."""
    from conftest import build_tiny_llama, build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    tok.eos_token = "<|endoftext|>"
    model = build_tiny_llama(len(tok))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.model.embed_tokens.weight[2].fill_(2.0)
    model.config.eos_token_id = model.generation_config.eos_token_id = 0
    fmt = trained_prompt_format(tok, chat=True)
    assert fmt.end_of_turn == "<|im_end|>" != tok.eos_token
    return save_pretrained_atomic(model, tok, tmp_path / "eot", prompt_format=fmt)


def test_generation_stops_at_the_recorded_end_of_turn(end_of_turn_model, monkeypatch):
    from polm.rollout import HFGenerator

    finished = []
    real = HFGenerator.generate

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        finished.extend((c.token_ids, c.finish_reason) for c in out)
        return out

    monkeypatch.setattr(HFGenerator, "generate", spy)
    args = ["generate", "--model", str(end_of_turn_model), "--prompt", "hello", "--max-new-tokens", "5"]
    assert main(args) == 0 and main([*args, "--no-prompt-format"]) == 0
    assert finished == [([2], "stop"), ([2] * 5, "length")]
