"""Batched generation from any model or adapter polm produces: `polm generate`.

    polm generate --model runs/sft/final --prompt "Calculate 12 + 7." --max-new-tokens 64
    polm generate --model smollm2-135m-instruct --file prompts.jsonl --temperature 0.7 --num-samples 4

Prompts are chat-formatted with the tokenizer's own template when it has one (`--no-chat` for raw
text), left-padded into batches, and decoded greedily (temperature 0) or by sampling, through the
one generation path (polm.rollout: HFGenerator + generate_text). A model directory that records the
prompt format it was trained with (`polm_prompt.json`, written by every polm recipe) gets that format
and stops at its end-of-turn token, unless `--no-prompt-format`; `--stop` adds stop strings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from polm.data.templating import TrainedPromptFormat, prompt_of
from polm.errors import PolmError
from polm.rollout import HFGenerator, SamplingConfig
from polm.rollout.text import generate_text


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
    parser.add_argument("--no-prompt-format", "--raw-prompt", dest="no_prompt_format", action="store_true",
                        help="ignore the prompt format recorded in the model directory (polm_prompt.json)")
    parser.add_argument("--stop", action="append", default=[],
                        help="end a completion at this string or special token (repeatable)")


def sampling_from_args(args: argparse.Namespace, n: int = 1) -> SamplingConfig:
    """The sampling settings of the shared model arguments, `n` completions per prompt."""
    return SamplingConfig(n=n, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k)


def recorded_prompt_format(ref: str, *, use: bool = True, chat: bool = True) -> TrainedPromptFormat | None:
    """The prompt format recorded in the model (or adapter) directory `ref`, when `use` and it has one
    (`chat=False` turns its chat template off); says on stderr that it is applied."""
    fmt = TrainedPromptFormat.read(ref) if use and Path(ref).is_dir() else None
    if fmt is None:
        return None
    fmt = fmt if chat else dataclasses.replace(fmt, chat=False)
    print(f"polm: applying the prompt format recorded in {ref} ({fmt.describe()}); "
          "--no-prompt-format to turn it off", file=sys.stderr)
    return fmt


def stop_at(model, tokenizer, stops: list[str]) -> list[str]:
    """Make every special token among `stops` (an end-of-turn token such as `<|im_end|>`) end generation
    by id, as the generation config's eos ids do (polm.rollout.hf reads them); the rest are returned as
    stop strings (decoded text drops special tokens, so they could never match as text)."""
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    ids = [tokenizer.convert_tokens_to_ids(s) for s in stops if s in special]
    config = getattr(model, "generation_config", None)
    if ids and config is not None:
        eos = config.eos_token_id
        current = [] if eos is None else eos if isinstance(eos, list) else [eos]
        config.eos_token_id = sorted({*current, *ids})
    return [s for s in stops if s not in special]


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
    sampling = sampling_from_args(args, n=args.num_samples)
    sampling.validate()
    model, tokenizer = load_for_inference(args.model, args.device, args.dtype, args.trust_remote_code)
    fmt = recorded_prompt_format(args.model, use=not args.no_prompt_format, chat=not args.no_chat)
    sampling.stop = stop_at(model, tokenizer, [*(fmt.stop if fmt else ()), *args.stop])
    generator = HFGenerator(model, tokenizer, prompts_per_batch=args.batch_size)
    texts = [fmt.render(tokenizer, p) for p in prompts] if fmt else prompts
    results = generate_text(generator, tokenizer, texts, sampling, seed=args.seed, chat=not (fmt or args.no_chat))
    rows = [{"prompt": p, "completions": c} for p, c in zip(prompts, results)]
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    for row in rows:
        for completion in row["completions"]:
            print(json.dumps({"prompt": row["prompt"], "completion": completion}, ensure_ascii=False))
    sys.stdout.flush()
    return 0
