"""Batched generation from any model or adapter polm produces: `polm generate`.

    polm generate --model runs/sft/final --prompt "Calculate 12 + 7." --max-new-tokens 64
    polm generate --model smollm2-135m-instruct --file prompts.jsonl --temperature 0.7 --num-samples 4

Prompts are chat-formatted with the tokenizer's own template when it has one (`--no-chat` for raw
text), left-padded into batches, and decoded greedily (temperature 0) or by sampling.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from polm.data.templating import format_prompt, prompt_of
from polm.errors import PolmError


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0      # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1
    batch_size: int = 16
    chat: bool = True             # apply the tokenizer's chat template when it has one
    stop: tuple[str, ...] = ()
    seed: int = 0
    progress: bool = False        # a progress bar over the prompts on stderr (long offline sampling jobs)


@torch.no_grad()
def generate(model, tokenizer, prompts: list, settings: GenerationSettings) -> list[list[str]]:
    """Completions for each prompt: a list of `num_samples` strings per prompt, in prompt order."""
    texts = [format_prompt(tokenizer, p, settings.chat) for p in prompts]
    device = next(model.parameters()).device
    torch.manual_seed(settings.seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    out: list[list[str]] = []
    from polm.train.metrics import ProgressBar

    bar = ProgressBar(len(texts), 0, settings.progress, label="sample")
    try:
        for start in range(0, len(texts), settings.batch_size):
            chunk = texts[start:start + settings.batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            ids = model.generate(**enc, **_sampling_kwargs(tokenizer, settings))
            new = ids[:, enc["input_ids"].shape[1]:]
            decoded = [_cut(tokenizer.decode(row, skip_special_tokens=True), settings.stop) for row in new]
            n = settings.num_samples
            out += [decoded[i * n:(i + 1) * n] for i in range(len(chunk))]
            bar.advance_to(len(out), f"{len(out) * n} completions")
    finally:
        bar.close()
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def _sampling_kwargs(tokenizer, s: GenerationSettings) -> dict:
    kwargs = {"max_new_tokens": s.max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
              "num_return_sequences": s.num_samples}
    if s.temperature > 0:
        kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def _cut(text: str, stop: tuple[str, ...]) -> str:
    for s in stop:
        pos = text.find(s)
        if pos >= 0:
            text = text[:pos]
    return text


def load_for_inference(ref: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    from polm.models import ModelConfig, load_model, load_tokenizer

    cfg = ModelConfig(name=ref, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code)
    return load_model(cfg), tokenizer


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="embedded name, local directory, adapter directory or hub id")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trust-remote-code", action="store_true")


def settings_from_args(args: argparse.Namespace, **extra) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, chat=not args.no_chat, seed=args.seed, **extra)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompt", action="append", default=[], help="a user prompt (repeatable)")
    parser.add_argument("--file", help="JSONL with a 'prompt' string or 'messages' list per line")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", help="write results as JSONL here")


def read_prompts(path: str) -> list:
    from polm.data.loaders import load_records

    prompts = []
    for rec in load_records(path, require_targets=False).records:
        prompts.append(rec["text"] if "text" in rec and "prompt" not in rec and "messages" not in rec
                       else prompt_of(rec, path))
    return prompts


def run(args: argparse.Namespace) -> int:
    prompts = list(args.prompt) + (read_prompts(args.file) if args.file else [])
    if not prompts:
        raise PolmError("no prompts given", fix="Pass --prompt TEXT (repeatable) or --file prompts.jsonl.")
    settings = settings_from_args(args, num_samples=args.num_samples, batch_size=args.batch_size)
    model, tokenizer = load_for_inference(args.model, args.device, args.dtype, args.trust_remote_code)
    results = generate(model, tokenizer, prompts, settings)
    rows = [{"prompt": p, "completions": c} for p, c in zip(prompts, results)]
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    for row in rows:
        for completion in row["completions"]:
            print(json.dumps({"prompt": row["prompt"], "completion": completion}, ensure_ascii=False))
    sys.stdout.flush()
    return 0
