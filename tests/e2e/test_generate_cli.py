"""`polm generate` and `polm chat` on a tiny model: same tokens as plain transformers greedy decoding."""

from __future__ import annotations

import io
import json

import torch

from polm.cli import main


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
